//! The recipe key reference, generated from the `///` docs of the structs in `recipe.rs`.
//!
//! `docs/training.md` embeds [`render_key_table`]; a test keeps the two identical and checks
//! that every valid dotted key is documented (`PADT_UPDATE_DOCS=1` rewrites the doc).

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use crate::recipe::{valid_keys, TrainConfig, INDEX_SEGMENT};

const RECIPE_SOURCE: &str = include_str!("recipe.rs");

/// One documented recipe key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDoc {
    /// Dotted key (list elements as `N`).
    pub key: String,
    /// Rust type of the setting, as written in `recipe.rs`.
    pub ty: String,
    /// Default value, as compact JSON.
    pub default: String,
    /// The field's documentation.
    pub doc: String,
}

struct Field {
    name: String,
    ty: String,
    doc: String,
}

/// Fields of every `pub struct` in `recipe.rs`, with their doc comments.
fn parse_structs() -> BTreeMap<String, Vec<Field>> {
    let mut structs = BTreeMap::new();
    let mut current: Option<(String, Vec<Field>)> = None;
    let mut doc = Vec::new();
    for line in RECIPE_SOURCE.lines() {
        let trimmed = line.trim();
        if let Some(rest) = line.strip_prefix("pub struct ") {
            if let Some(name) = rest.strip_suffix(" {") {
                current = Some((name.trim().to_string(), Vec::new()));
            }
            doc.clear();
            continue;
        }
        if line == "}" {
            if let Some((name, fields)) = current.take() {
                structs.insert(name, fields);
            }
            doc.clear();
            continue;
        }
        let Some((_, fields)) = current.as_mut() else {
            continue;
        };
        if let Some(text) = trimmed.strip_prefix("///") {
            doc.push(text.trim().to_string());
        } else if let Some(rest) = trimmed.strip_prefix("pub ") {
            if let Some((name, ty)) = rest.split_once(':') {
                fields.push(Field {
                    name: name.trim().to_string(),
                    ty: ty.trim().trim_end_matches(',').to_string(),
                    doc: doc.join(" "),
                });
            }
            doc.clear();
        } else if !trimmed.starts_with("#[") {
            doc.clear();
        }
    }
    structs
}

/// `Option<X>` → X, `Vec<X>` → X (with whether it was a list).
fn base_type(ty: &str) -> (&str, bool) {
    if let Some(inner) = ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        return base_type(inner);
    }
    if let Some(inner) = ty.strip_prefix("Vec<").and_then(|t| t.strip_suffix('>')) {
        return (base_type(inner).0, true);
    }
    (ty, false)
}

/// Every leaf key with its documentation and default, in declaration order.
pub fn key_docs() -> Vec<KeyDoc> {
    let structs = parse_structs();
    let mut schema = TrainConfig::default();
    schema.data.datasets = vec![Default::default()];
    schema.param_groups = vec![Default::default()];
    let tree = serde_yaml_ng::to_value(&schema).expect("serialisable");
    let mut out = Vec::new();
    walk(&structs, "TrainConfig", "", &tree, &mut out);
    out
}

fn walk(
    structs: &BTreeMap<String, Vec<Field>>,
    name: &str,
    prefix: &str,
    tree: &Value,
    out: &mut Vec<KeyDoc>,
) {
    let Some(fields) = structs.get(name) else {
        return;
    };
    for f in fields {
        let key = format!("{prefix}{}", f.name);
        let value = tree.get(f.name.as_str()).cloned().unwrap_or(Value::Null);
        let (base, is_list) = base_type(&f.ty);
        if structs.contains_key(base) {
            let (child_prefix, child) = if is_list {
                let first = value.get(0).cloned().unwrap_or(Value::Null);
                (format!("{key}.{INDEX_SEGMENT}."), first)
            } else {
                (format!("{key}."), value)
            };
            walk(structs, base, &child_prefix, &child, out);
        } else {
            out.push(KeyDoc {
                key,
                ty: f.ty.clone(),
                default: serde_json::to_string(&value).expect("json"),
                doc: f.doc.clone(),
            });
        }
    }
}

/// The markdown table of every recipe key (what `docs/training.md` embeds).
pub fn render_key_table() -> String {
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for k in key_docs() {
        let esc = |s: &str| s.replace('|', "\\|");
        out += &format!(
            "| `{}` | `{}` | `{}` | {} |\n",
            k.key,
            esc(&k.ty),
            esc(&k.default),
            esc(&k.doc)
        );
    }
    out
}

/// Keys that [`valid_keys`] accepts but [`key_docs`] does not document (should be empty).
pub fn undocumented_keys() -> Vec<String> {
    let documented: Vec<String> = key_docs().into_iter().map(|k| k.key).collect();
    valid_keys()
        .into_iter()
        .filter(|k| !documented.contains(k))
        .collect()
}
