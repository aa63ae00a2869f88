//! The demo's tokenizer: the padt-tiny byte-level BPE (480 vocabulary entries, then Qwen's 22
//! special tokens at 480–501) with its merges re-learned on the demo's own text, so that every
//! word of the chat template, the REC prompt and answer and the referring expressions is one
//! token ("Ġcircle", "Ġsmall"), as the real Qwen2.5-VL tokenizer has them.
//!
//! The padt-tiny merges split these words into 2–8 pieces ("Ġs m a ll", "Ġ ri g ht"): a
//! 112-token sample where one-token words give 75, and a three-layer LLM that first has to
//! assemble "small" from its letters before it can look for small shapes.
//!
//! How the vocabulary is made, deterministically (no seed involved):
//! 1. the corpus: the system prompt and role names, and [`rec_prompt`] / [`rec_answer`]
//!    around every sentence the expression grammar can write ([`all_sentences`]);
//! 2. pre-tokenisation with the padt-tiny pre-tokenizer (Qwen's split regex + byte level);
//! 3. BPE merges learned greedily on the word counts ([`learn_merges`]: most frequent pair
//!    first, ties to the smaller pair), until every corpus word is one token;
//! 4. the remaining entries up to 480 are the padt-tiny merges in their order (those whose
//!    parts exist and whose result is new), so text outside the demo still encodes compactly.
//!
//! Token ids 0–255 (the byte alphabet) and 480–501 (special tokens) are the padt-tiny ones, so
//! `config.json`'s token ids, `added_tokens.json`, `tokenizer_config.json` and the chat template
//! are unchanged.

use super::expression::{Expression, Side};
use super::model_dir::TOKENIZER_FILES;
use super::scene::{Colour, Shape, Size};
use anyhow::{bail, Context};
use padt_data::sources::refcoco::{rec_answer, rec_prompt};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use tokenizers::tokenizer::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
use tokenizers::Tokenizer;

/// Entries of the BPE vocabulary (byte alphabet + merges); the special tokens follow it.
pub const BPE_VOCAB_SIZE: usize = 480;
/// The byte-level alphabet: ids 0–255.
const ALPHABET_SIZE: usize = 256;

/// Every sentence [`Expression::sentence`] can write: size × colour × shape-or-"object", with
/// no position, "on the left/right" or "leftmost/rightmost".
pub fn all_sentences() -> Vec<String> {
    let mut out = Vec::new();
    let sizes = std::iter::once(None).chain(Size::ALL.map(Some));
    for size in sizes {
        for colour in std::iter::once(None).chain(Colour::ALL.map(Some)) {
            for shape in std::iter::once(None).chain(Shape::ALL.map(Some)) {
                for side in [None, Some(Side::Left), Some(Side::Right)] {
                    let e = Expression {
                        size,
                        colour,
                        shape,
                        side,
                    };
                    // Group size decides the wording of a position: 2 gives "on the left",
                    // 3 gives "leftmost"; `sentence` only counts, so fake the groups.
                    out.push(e.sentence_for_group(2));
                    if side.is_some() {
                        out.push(e.sentence_for_group(3));
                    }
                }
            }
        }
    }
    out
}

/// The texts the merges are learned on (see the module docs).
pub fn corpus() -> Vec<String> {
    let mut texts = vec![
        "system\nYou are a helpful assistant.".to_string(),
        "user\n".to_string(),
        "assistant\n".to_string(),
    ];
    for s in all_sentences() {
        texts.push(rec_prompt(&s));
        texts.push(rec_answer(&s));
    }
    texts
}

/// Counts of the pre-tokenised pieces (byte-level strings) of `texts`.
fn word_counts(pre: &impl PreTokenizer, texts: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for text in texts {
        let mut pieces = PreTokenizedString::from(text.as_str());
        pre.pre_tokenize(&mut pieces)
            .map_err(|e| anyhow::anyhow!("pre-tokenising {text:?}: {e}"))?;
        for (piece, _, _) in pieces.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *counts.entry(piece.to_string()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Greedy BPE on word counts: repeatedly merges the most frequent adjacent pair (ties: the
/// smaller pair in string order) until no word has two symbols left or `max_merges` are made.
/// Words start as their characters (byte-level symbols).
pub fn learn_merges(words: &BTreeMap<String, u64>, max_merges: usize) -> Vec<(String, String)> {
    let mut split: Vec<(Vec<String>, u64)> = words
        .iter()
        .map(|(w, &n)| (w.chars().map(String::from).collect(), n))
        .collect();
    let mut merges = Vec::new();
    while merges.len() < max_merges {
        let mut pairs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (symbols, n) in &split {
            for pair in symbols.windows(2) {
                *pairs.entry((&pair[0], &pair[1])).or_insert(0) += n;
            }
        }
        // Strictly greater keeps the first (smallest) pair among equal counts.
        let mut best: Option<((&str, &str), u64)> = None;
        for (&pair, &n) in &pairs {
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((pair, n));
            }
        }
        let Some(((a, b), _)) = best else { break };
        let (a, b) = (a.to_string(), b.to_string());
        for (symbols, _) in &mut split {
            let mut i = 0;
            while i + 1 < symbols.len() {
                if symbols[i] == a && symbols[i + 1] == b {
                    symbols[i].push_str(&b);
                    symbols.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push((a, b));
    }
    merges
}

/// The padt-tiny `tokenizer.json` this module starts from.
fn fixture_tokenizer_json() -> &'static [u8] {
    TOKENIZER_FILES
        .iter()
        .find(|(name, _)| *name == "tokenizer.json")
        .map(|(_, bytes)| *bytes)
        .expect("TOKENIZER_FILES holds tokenizer.json")
}

/// The demo vocabulary and merges, in id / rank order.
pub struct DemoBpe {
    /// Token strings by id (0..[`BPE_VOCAB_SIZE`]).
    pub vocab: Vec<String>,
    pub merges: Vec<(String, String)>,
}

/// Builds the demo vocabulary (module docs, steps 1–4).
pub fn demo_bpe() -> anyhow::Result<DemoBpe> {
    let fixture: Value = serde_json::from_slice(fixture_tokenizer_json())?;
    let tokenizer = Tokenizer::from_bytes(fixture_tokenizer_json())
        .map_err(|e| anyhow::anyhow!("padt-tiny tokenizer.json: {e}"))?;
    let pre = tokenizer
        .get_pre_tokenizer()
        .context("padt-tiny tokenizer.json has no pre-tokenizer")?;
    let fixture_vocab = fixture["model"]["vocab"]
        .as_object()
        .context("padt-tiny tokenizer.json: model.vocab")?;
    let mut by_id: Vec<(u64, &str)> = fixture_vocab
        .iter()
        .map(|(tok, id)| (id.as_u64().unwrap_or(u64::MAX), tok.as_str()))
        .collect();
    by_id.sort();
    let mut vocab: Vec<String> = by_id
        .iter()
        .take(ALPHABET_SIZE)
        .map(|(_, t)| t.to_string())
        .collect();
    if by_id.len() != BPE_VOCAB_SIZE || by_id.iter().enumerate().any(|(i, (id, _))| *id != i as u64)
    {
        bail!("padt-tiny tokenizer.json: expected BPE ids 0..{BPE_VOCAB_SIZE}");
    }
    let words = word_counts(pre, &corpus())?;
    let learned = learn_merges(&words, BPE_VOCAB_SIZE - ALPHABET_SIZE);
    let mut known: BTreeSet<String> = vocab.iter().cloned().collect();
    let mut merges = Vec::new();
    for (a, b) in learned {
        let joined = format!("{a}{b}");
        if !known.insert(joined.clone()) {
            bail!("learned merge {a:?} + {b:?} repeats a token");
        }
        vocab.push(joined);
        merges.push((a, b));
    }
    let fixture_merges = fixture["model"]["merges"]
        .as_array()
        .context("padt-tiny tokenizer.json: model.merges")?;
    for m in fixture_merges {
        if vocab.len() == BPE_VOCAB_SIZE {
            break;
        }
        let pair = m
            .as_array()
            .and_then(|p| Some((p.first()?.as_str()?, p.get(1)?.as_str()?)));
        let (a, b) = pair.context("padt-tiny tokenizer.json: a merge is not a [a, b] pair")?;
        let joined = format!("{a}{b}");
        if known.contains(a) && known.contains(b) && known.insert(joined.clone()) {
            vocab.push(joined);
            merges.push((a.to_string(), b.to_string()));
        }
    }
    if vocab.len() != BPE_VOCAB_SIZE {
        bail!(
            "the demo vocabulary has {} entries, expected {BPE_VOCAB_SIZE}",
            vocab.len()
        );
    }
    Ok(DemoBpe { vocab, merges })
}

/// The three tokenizer files that differ from padt-tiny's: `tokenizer.json`, `vocab.json` and
/// `merges.txt` (the slow tokenizer's pair), as `(name, bytes)`.
pub fn demo_tokenizer_files() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let bpe = demo_bpe()?;
    let mut vocab = Map::new();
    for (id, tok) in bpe.vocab.iter().enumerate() {
        vocab.insert(tok.clone(), Value::from(id));
    }
    let merges: Vec<Value> = bpe
        .merges
        .iter()
        .map(|(a, b)| Value::from(vec![a.as_str(), b.as_str()]))
        .collect();
    let mut json: Value = serde_json::from_slice(fixture_tokenizer_json())?;
    json["model"]["vocab"] = Value::Object(vocab.clone());
    json["model"]["merges"] = Value::Array(merges);
    let mut tokenizer_json = serde_json::to_string_pretty(&json)?;
    tokenizer_json.push('\n');
    let vocab_json = serde_json::to_string(&Value::Object(vocab))?;
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in &bpe.merges {
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    Ok(vec![
        ("tokenizer.json", tokenizer_json.into_bytes()),
        ("vocab.json", vocab_json.into_bytes()),
        ("merges.txt", merges_txt.into_bytes()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_counts_then_order() {
        let words = BTreeMap::from([("abab".to_string(), 2), ("ba".to_string(), 3)]);
        // Pairs: ab 4, ba 2 + 3 = 5 -> "ba" first; then "a ba b" gives a+ba 2, ba+b 2 -> "a"
        // < "ba", so a+ba; then "aba b".
        let m = learn_merges(&words, 10);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, [("b", "a"), ("a", "ba"), ("aba", "b")]);
        assert_eq!(learn_merges(&words, 1).len(), 1);
    }

    #[test]
    fn every_corpus_word_is_one_token() {
        let files = demo_tokenizer_files().unwrap();
        let tokenizer = Tokenizer::from_bytes(&files[0].1).unwrap();
        let words = word_counts(tokenizer.get_pre_tokenizer().unwrap(), &corpus()).unwrap();
        for word in words.keys() {
            let text: String = tokenizer
                .decode(
                    &[tokenizer
                        .token_to_id(word)
                        .unwrap_or_else(|| panic!("{word:?} is no token"))],
                    false,
                )
                .unwrap();
            let enc = tokenizer.encode(text.as_str(), false).unwrap();
            assert_eq!(enc.get_tokens(), [word.as_str()], "{text:?}");
        }
        // Text outside the demo still encodes, byte for byte.
        let odd = "Zebra 42 über ∑ \"quotes\"\n";
        let enc = tokenizer.encode(odd, false).unwrap();
        assert_eq!(tokenizer.decode(enc.get_ids(), false).unwrap(), odd);
        // Special tokens keep their ids.
        assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(481));
        assert_eq!(tokenizer.token_to_id("<|image_pad|>"), Some(492));
        assert_eq!(tokenizer.get_vocab_size(true), BPE_VOCAB_SIZE + 22);
    }

    #[test]
    fn sentences_cover_the_grammar() {
        let s = all_sentences();
        for word in [
            "leftmost",
            "rightmost",
            "left",
            "right",
            "object",
            "small",
            "yellow",
            "triangle",
        ] {
            assert!(s.iter().any(|t| t.split(' ').any(|w| w == word)), "{word}");
        }
        for t in &s {
            assert!(Expression::parse(t).is_some(), "{t}");
        }
    }
}
