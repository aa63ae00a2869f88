//! `docs/training.md` embeds the key reference generated from `recipe.rs`.
//! `PADT_UPDATE_DOCS=1 cargo test --release -p padt-train --test it docs` rewrites it.

use padt_train::keydoc::{key_docs, render_key_table, undocumented_keys};
use padt_train::recipe::valid_keys;

use crate::common::repo_root;

const BEGIN: &str = "<!-- config-keys:begin -->";
const END: &str = "<!-- config-keys:end -->";

#[test]
fn every_key_has_documentation() {
    assert_eq!(undocumented_keys(), Vec::<String>::new());
    let docs = key_docs();
    let keys: Vec<String> = docs.iter().map(|k| k.key.clone()).collect();
    assert_eq!(
        keys,
        valid_keys(),
        "key_docs and the serialised config disagree"
    );
    for k in &docs {
        assert!(
            !k.doc.is_empty(),
            "`{}` has no doc comment in recipe.rs",
            k.key
        );
    }
    let lr = docs.iter().find(|k| k.key == "optimizer.lr").unwrap();
    assert_eq!(lr.default.parse::<f64>().unwrap(), 2e-5);
    assert!(lr.doc.contains("2e-5"));
}

#[test]
fn training_doc_lists_every_key() {
    let path = repo_root().join("docs/training.md");
    let text = std::fs::read_to_string(&path).expect("docs/training.md exists");
    let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        panic!("docs/training.md lacks the {BEGIN} … {END} block");
    };
    let generated = format!("{BEGIN}\n{}{END}", render_key_table());
    let current = &text[start..end + END.len()];
    if current != generated {
        if std::env::var_os("PADT_UPDATE_DOCS").is_some() {
            let updated = format!(
                "{}{}{}",
                &text[..start],
                generated,
                &text[end + END.len()..]
            );
            std::fs::write(&path, updated).unwrap();
        } else {
            panic!(
                "docs/training.md's key table is out of date: run \
                 PADT_UPDATE_DOCS=1 cargo test --release -p padt-train --test it docs"
            );
        }
    }
    let text = std::fs::read_to_string(&path).unwrap();
    for key in valid_keys() {
        assert!(
            text.contains(&format!("`{key}`")),
            "`{key}` missing from docs/training.md"
        );
    }
}
