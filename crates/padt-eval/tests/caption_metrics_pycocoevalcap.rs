//! Caption metrics against pycocoevalcap 1.2 on `tests/fixtures/captions.json`, written by
//! `tools/coco_map_reference.py captions` (Java PTBTokenizer, Bleu(4), Rouge(), Cider()).

use std::path::Path;

use padt_eval::caption_metrics::{
    bleu, cider_d, ptb_tokenize, rouge_l, strip_vrt_markers, CaptionMetricError, CaptionPair,
};
use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/captions.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("captions.json")).expect("json")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn tokenized_pairs(fixture: &Value) -> Vec<CaptionPair> {
    fixture["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| CaptionPair {
            candidate: s["candidate_tokenized"].as_str().unwrap().to_string(),
            references: strings(&s["references_tokenized"]),
        })
        .collect()
}

#[test]
fn metrics_on_ptb_tokenized_text_equal_pycocoevalcap() {
    let fixture = fixture();
    let pairs = tokenized_pairs(&fixture);
    let expected = &fixture["expected"];
    let ours = bleu(&pairs).unwrap();
    for (k, o) in ours.iter().enumerate() {
        let e = expected["bleu"][k].as_f64().unwrap();
        assert!((o - e).abs() < TOLERANCE, "BLEU-{}: {o} vs {e}", k + 1);
    }
    let rouge = rouge_l(&pairs).unwrap();
    let e = expected["rouge_l"].as_f64().unwrap();
    assert!((rouge - e).abs() < TOLERANCE, "ROUGE-L: {rouge} vs {e}");
    let cider = cider_d(&pairs).unwrap();
    let e = expected["cider_d"].as_f64().unwrap();
    assert!((cider - e).abs() < TOLERANCE, "CIDEr-D: {cider} vs {e}");
}

#[test]
fn our_tokenizer_equals_the_java_ptb_tokenizer_on_the_fixture() {
    let fixture = fixture();
    let mut mismatches = Vec::new();
    for sample in fixture["samples"].as_array().unwrap() {
        let raw = std::iter::once(sample["candidate"].as_str().unwrap().to_string())
            .chain(strings(&sample["references"]));
        let java = std::iter::once(sample["candidate_tokenized"].as_str().unwrap().to_string())
            .chain(strings(&sample["references_tokenized"]));
        for (raw, java) in raw.zip(java) {
            let ours = ptb_tokenize(&raw);
            if ours != java {
                mismatches.push(format!("{raw:?}: ours {ours:?}, java {java:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn stripping_markers_recovers_the_plain_candidate() {
    let fixture = fixture();
    for sample in fixture["samples"].as_array().unwrap() {
        let with_markers = sample["candidate_with_markers"].as_str().unwrap();
        assert_eq!(
            strip_vrt_markers(with_markers),
            sample["candidate"].as_str().unwrap(),
            "from {with_markers:?}"
        );
    }
}

#[test]
fn identical_captions_score_one_on_bleu_and_rouge() {
    let pairs = vec![
        CaptionPair {
            candidate: "a man rides a red bike on the road".into(),
            references: vec!["a man rides a red bike on the road".into()],
        },
        CaptionPair {
            candidate: "two dogs play in the snow".into(),
            references: vec!["two dogs play in the snow".into(), "dogs in snow".into()],
        },
    ];
    assert!((bleu(&pairs).unwrap()[3] - 1.0).abs() < 1e-6);
    assert!((rouge_l(&pairs).unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn bad_input_is_an_error() {
    assert_eq!(bleu(&[]), Err(CaptionMetricError::Empty));
    let no_refs = [CaptionPair {
        candidate: "a cat".into(),
        references: vec![],
    }];
    assert_eq!(
        cider_d(&no_refs),
        Err(CaptionMetricError::NoReference { index: 0 })
    );
}

#[test]
fn stripping_cleans_every_ric_answer_template_of_the_data_golden() {
    let dir = std::env::var("PADT_DATA_GOLDEN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
        });
    let mut checked = 0;
    for name in [
        "ric_instances_val2017.jsonl",
        "ric_instances_train2017.jsonl",
    ] {
        let text = std::fs::read_to_string(dir.join("expected").join(name)).expect("RIC golden");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let record: Value = serde_json::from_str(line).expect("record");
            let template = record["answer_template"].as_str().expect("answer_template");
            let stripped = strip_vrt_markers(template);
            assert!(
                !stripped.contains("<|") && !stripped.contains("()") && !stripped.contains("  "),
                "{template:?} -> {stripped:?}"
            );
            // Only the markup goes: the words are the template's words minus the groups.
            let words = |s: &str| {
                s.split_whitespace()
                    .filter(|w| !w.contains("<|"))
                    .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
            };
            assert_eq!(words(&stripped), words(template), "{template:?}");
            checked += 1;
        }
    }
    assert!(checked > 0);
}
