//! Objects of a generated completion (`parseVRTintoCompletion`, padt-reference.md §6.2), with
//! the parse problems reported as warnings instead of swallowed.
//!
//! Every token is turned into its own string (VRT ids `>= V` become `<|VRT_i|>` with their local
//! index) and the walk stops after the EOS token. Each maximal run of consecutive VRTs is one
//! object; its label is the last quoted text closed before the run (`"the cat"<|VRT_3|>…`), and
//! persists across following runs, so every object in `2 "cat" (…, …)` gets "cat".
//!
//! Where the reference differs: it drops all objects of a sample whose completion ends inside a
//! VRT run, and feeds a VRT at the very first step the whole prefill hidden states. Here such
//! objects are kept (the features are exactly the hidden states that produced their VRTs) and
//! a [`ParseWarning`] says what happened.

use std::fmt;

use serde::Serialize;

/// One object: a maximal run of consecutive VRTs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedObject {
    /// The quoted label in force at the run (None when no label was closed before it).
    pub label: Option<String>,
    /// Generation steps (indices into the completion) of the run's VRTs.
    pub steps: Vec<usize>,
    /// Local VRT indices (merged-patch indices of the image).
    pub patches: Vec<u32>,
    /// The run as text (`<|VRT_10|><|VRT_21|>…`).
    pub vrts: String,
}

/// Something in a completion that the reference would silently mishandle or that makes an
/// object doubtful.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParseWarning {
    /// No EOS: generation stopped at max_new_tokens.
    NoEos { tokens: usize },
    /// The completion ends inside a VRT run (the reference drops every object of the sample).
    CutInsideVrtRun { object: usize },
    /// A VRT is the very first generated token (the reference would take the whole prefill as
    /// that object's features).
    VrtAsFirstToken,
    /// A VRT run with no closed label before it.
    ObjectWithoutLabel { object: usize },
    /// A VRT run while a quote is open (the label in force is the previous one).
    VrtInsideQuote { object: usize },
    /// A quote opened and never closed.
    UnclosedQuote,
    /// A VRT index beyond the image's merged tokens (cannot come from a masked generation).
    VrtOutOfImage { step: usize, index: u32, count: u32 },
}

impl fmt::Display for ParseWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEos { tokens } => write!(f, "no EOS within {tokens} tokens (cut off)"),
            Self::CutInsideVrtRun { object } => write!(
                f,
                "completion ends inside the VRT run of object {object} (kept; the reference \
                 drops all objects of such a sample)"
            ),
            Self::VrtAsFirstToken => write!(f, "a VRT is the first generated token"),
            Self::ObjectWithoutLabel { object } => {
                write!(f, "object {object} has no quoted label before it")
            }
            Self::VrtInsideQuote { object } => write!(f, "object {object} sits inside a quote"),
            Self::UnclosedQuote => write!(f, "a quote is opened and never closed"),
            Self::VrtOutOfImage { step, index, count } => write!(
                f,
                "step {step}: <|VRT_{index}|> is beyond the image's {count} merged tokens"
            ),
        }
    }
}

/// A parsed completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedCompletion {
    /// The token strings concatenated, up to and including EOS.
    pub completion: String,
    pub objects: Vec<ParsedObject>,
    pub warnings: Vec<ParseWarning>,
}

/// What the parser needs to know about ids.
#[derive(Debug, Clone, Copy)]
pub struct ParseVocab {
    /// `V`: local VRT `i` is id `V + i`.
    pub vocab_size: i64,
    pub eos_token_id: i64,
    /// Merged tokens of the sample's image (valid VRT indices `0..count`).
    pub vrt_count: u32,
}

/// Parses one completion of local ids; `token_text` gives the string of a text id (a single
/// token decoded on its own, special tokens kept).
pub fn parse_completion(
    ids: &[i64],
    vocab: ParseVocab,
    token_text: impl Fn(i64) -> String,
) -> ParsedCompletion {
    let mut completion = String::new();
    let mut objects: Vec<ParsedObject> = Vec::new();
    let mut warnings = Vec::new();
    let mut label: Option<String> = None;
    let mut quote: Option<String> = None;
    let mut current: Option<ParsedObject> = None;
    let mut saw_eos = false;
    for (step, &id) in ids.iter().enumerate() {
        if id >= vocab.vocab_size {
            let index = (id - vocab.vocab_size) as u32;
            let token = format!("<|VRT_{index}|>");
            completion.push_str(&token);
            if step == 0 {
                warnings.push(ParseWarning::VrtAsFirstToken);
            }
            if index >= vocab.vrt_count {
                warnings.push(ParseWarning::VrtOutOfImage {
                    step,
                    index,
                    count: vocab.vrt_count,
                });
            }
            let object = current.get_or_insert_with(|| {
                let n = objects.len();
                if label.is_none() {
                    warnings.push(ParseWarning::ObjectWithoutLabel { object: n });
                }
                if quote.is_some() {
                    warnings.push(ParseWarning::VrtInsideQuote { object: n });
                }
                ParsedObject {
                    label: label.clone(),
                    steps: Vec::new(),
                    patches: Vec::new(),
                    vrts: String::new(),
                }
            });
            object.steps.push(step);
            object.patches.push(index);
            object.vrts.push_str(&token);
            continue;
        }
        if let Some(object) = current.take() {
            objects.push(object);
        }
        let text = token_text(id);
        completion.push_str(&text);
        if id == vocab.eos_token_id {
            saw_eos = true;
            break;
        }
        for c in text.chars() {
            if c == '"' {
                match quote.take() {
                    None => quote = Some(String::new()),
                    Some(buf) => label = Some(buf.trim().to_string()),
                }
            } else if let Some(buf) = quote.as_mut() {
                buf.push(c);
            }
        }
    }
    if let Some(object) = current.take() {
        warnings.push(ParseWarning::CutInsideVrtRun {
            object: objects.len(),
        });
        objects.push(object);
    }
    if quote.is_some() {
        warnings.push(ParseWarning::UnclosedQuote);
    }
    if !saw_eos {
        warnings.push(ParseWarning::NoEos { tokens: ids.len() });
    }
    ParsedCompletion {
        completion,
        objects,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: ParseVocab = ParseVocab {
        vocab_size: 100,
        eos_token_id: 99,
        vrt_count: 30,
    };

    fn text(id: i64) -> String {
        match id {
            1 => "\"".into(),
            2 => "cat".into(),
            3 => " (".into(),
            4 => ", ".into(),
            5 => ")".into(),
            6 => "2 \"dog\"".into(),
            99 => "<|im_end|>".into(),
            _ => "?".into(),
        }
    }

    #[test]
    fn label_persists_across_runs_and_runs_split_on_text() {
        let ids = [6, 3, 110, 111, 4, 112, 5, 99];
        let p = parse_completion(&ids, VOCAB, text);
        assert_eq!(
            p.completion,
            "2 \"dog\" (<|VRT_10|><|VRT_11|>, <|VRT_12|>)<|im_end|>"
        );
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.objects[0].label.as_deref(), Some("dog"));
        assert_eq!(p.objects[1].label.as_deref(), Some("dog"));
        assert_eq!(p.objects[0].steps, vec![2, 3]);
        assert_eq!(p.objects[0].patches, vec![10, 11]);
        assert_eq!(p.objects[1].vrts, "<|VRT_12|>");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn label_from_separate_quote_tokens_and_tokens_after_eos_ignored() {
        let ids = [1, 2, 1, 105, 99, 106];
        let p = parse_completion(&ids, VOCAB, text);
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.objects[0].label.as_deref(), Some("cat"));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn problems_are_reported() {
        // VRT first, no label, cut inside a run, no EOS, unclosed quote, VRT outside the image.
        let ids = [105, 1, 2, 140];
        let p = parse_completion(&ids, VOCAB, text);
        assert_eq!(p.objects.len(), 2);
        assert!(p.warnings.contains(&ParseWarning::VrtAsFirstToken));
        assert!(p
            .warnings
            .contains(&ParseWarning::ObjectWithoutLabel { object: 0 }));
        assert!(p
            .warnings
            .contains(&ParseWarning::VrtInsideQuote { object: 1 }));
        assert!(p
            .warnings
            .contains(&ParseWarning::CutInsideVrtRun { object: 1 }));
        assert!(p.warnings.contains(&ParseWarning::NoEos { tokens: 4 }));
        assert!(p.warnings.contains(&ParseWarning::UnclosedQuote));
        assert!(p.warnings.contains(&ParseWarning::VrtOutOfImage {
            step: 3,
            index: 40,
            count: 30
        }));
    }
}
