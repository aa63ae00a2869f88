//! RIC caption metrics: BLEU-1..4, ROUGE-L and CIDEr-D, computed as pycocoevalcap computes them
//! (`Bleu(4)`, `Rouge()`, `Cider()`), plus the text preparation in front of them: stripping the
//! VRT/object markers and a PTB-style tokenizer (docs/evaluation.md).
//!
//! The metric functions take already tokenised text (tokens separated by single spaces), as
//! pycocoevalcap's scorers do after its Java PTBTokenizer.

use std::collections::{HashMap, HashSet};

/// One image (or sample): the candidate caption and its reference captions, all tokenised.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionPair {
    pub candidate: String,
    pub references: Vec<String>,
}

/// Errors in caption metric input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptionMetricError {
    #[error("no captions to score")]
    Empty,
    #[error("caption sample {index} has no reference caption")]
    NoReference { index: usize },
}

fn check(pairs: &[CaptionPair]) -> Result<(), CaptionMetricError> {
    if pairs.is_empty() {
        return Err(CaptionMetricError::Empty);
    }
    match pairs.iter().position(|p| p.references.is_empty()) {
        Some(index) => Err(CaptionMetricError::NoReference { index }),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Text preparation
// ---------------------------------------------------------------------------------------------

/// Is `token` a visual reference token or an object placeholder (`<|VRT_12|>`, `<|Obj_3|>`)?
fn is_marker(token: &str) -> bool {
    let inner = match token.strip_prefix("<|").and_then(|t| t.strip_suffix("|>")) {
        Some(inner) => inner,
        None => return false,
    };
    ["VRT_", "Obj_"].iter().any(|prefix| {
        inner
            .strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Splits `text` into marker and non-marker pieces.
fn marker_pieces(text: &str) -> Vec<(bool, &str)> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<|") {
        let after = &rest[start..];
        match after.find("|>") {
            Some(end) if is_marker(&after[..end + 2]) => {
                if start > 0 {
                    pieces.push((false, &rest[..start]));
                }
                pieces.push((true, &after[..end + 2]));
                rest = &after[end + 2..];
            }
            _ => {
                pieces.push((false, &rest[..start + 2]));
                rest = &rest[start + 2..];
            }
        }
    }
    if !rest.is_empty() {
        pieces.push((false, rest));
    }
    pieces
}

/// Removes the grounding markup from a RIC caption: every parenthesised group that holds only
/// markers, commas and spaces (`(<|VRT_1|><|VRT_2|>, <|VRT_7|>)`, `(<|Obj_0|>)`), then any marker
/// left outside parentheses; spaces are collapsed and a space before `. , ; : ! ?` is dropped.
pub fn strip_vrt_markers(text: &str) -> String {
    // Replace markers by a sentinel, then drop "( sentinel [, sentinel]* )" groups.
    const SENTINEL: char = '\u{1}';
    let mut marked = String::with_capacity(text.len());
    for (is_marker, piece) in marker_pieces(text) {
        if is_marker {
            marked.push(SENTINEL);
        } else {
            marked.push_str(piece);
        }
    }
    let chars: Vec<char> = marked.chars().collect();
    let mut out = String::with_capacity(marked.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '(' {
            if let Some(close) = chars[i + 1..].iter().position(|&c| c == ')') {
                let inner = &chars[i + 1..i + 1 + close];
                let only_markers = inner.contains(&SENTINEL)
                    && inner
                        .iter()
                        .all(|&c| c == SENTINEL || c == ',' || c.is_whitespace());
                if only_markers {
                    i += close + 2;
                    continue;
                }
            }
        }
        if chars[i] != SENTINEL {
            out.push(chars[i]);
        }
        i += 1;
    }
    let collapsed = out.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cleaned = String::with_capacity(collapsed.len());
    let mut chars = collapsed.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' && chars.peek().is_some_and(|n| ".,;:!?".contains(*n)) {
            continue;
        }
        cleaned.push(c);
    }
    cleaned
}

/// Tokens pycocoevalcap's PTBTokenizer wrapper removes after tokenising.
const PTB_PUNCTUATION: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

const CONTRACTION_SUFFIXES: [&str; 7] = ["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"];

/// Letters separated by periods and ending in one: "u.s.", "e.g.".
fn is_abbreviation(word: &[char]) -> bool {
    word.len() >= 4
        && word
            .chunks(2)
            .all(|pair| pair.len() == 2 && pair[0].is_alphabetic() && pair[1] == '.')
}

/// Splits one whitespace-delimited word into PTB-like tokens.
fn split_word(word: &str, out: &mut Vec<String>) {
    let leading = ['"', '\'', '`', '(', '[', '{'];
    let trailing = ['"', '\'', ')', ']', '}', '.', ',', '!', '?', ';', ':'];
    let mut start = 0;
    let bytes: Vec<char> = word.chars().collect();
    let mut end = bytes.len();
    let mut front = Vec::new();
    while start < end && leading.contains(&bytes[start]) {
        front.push(bytes[start].to_string());
        start += 1;
    }
    let mut back = Vec::new();
    while end > start && trailing.contains(&bytes[end - 1]) {
        // An abbreviation such as "u.s." or "e.g." keeps its final period.
        if bytes[end - 1] == '.' && is_abbreviation(&bytes[start..end]) {
            break;
        }
        // An ellipsis stays one token.
        if end - start >= 3 && bytes[end - 3..end].iter().all(|&c| c == '.') {
            back.push("...".to_string());
            end -= 3;
            continue;
        }
        back.push(bytes[end - 1].to_string());
        end -= 1;
    }
    out.extend(front);
    let core: String = bytes[start..end].iter().collect();
    if !core.is_empty() {
        match CONTRACTION_SUFFIXES
            .iter()
            .find(|s| core.len() > s.len() && core.ends_with(*s))
        {
            Some(suffix) => {
                out.push(core[..core.len() - suffix.len()].to_string());
                out.push(suffix.to_string());
            }
            None => out.push(core),
        }
    }
    out.extend(back.into_iter().rev());
}

/// Lower-cases and tokenises a caption the way pycocoevalcap's PTBTokenizer step does for plain
/// English captions (punctuation split off and removed, clitics such as `'s` and `n't` split), then
/// joins the tokens with single spaces. It is an approximation of Stanford's PTBTokenizer (exotic
/// input such as URLs or brackets may tokenise differently); see docs/evaluation.md.
pub fn ptb_tokenize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    for word in lower.split_whitespace() {
        split_word(word, &mut tokens);
    }
    tokens
        .into_iter()
        .map(|t| match t.as_str() {
            "\"" => "''".to_string(),
            // PTBTokenizer -lowerCase also lower-cases its bracket tokens, so these miss the
            // wrapper's (upper-case) punctuation list and stay in the text.
            "(" => "-lrb-".to_string(),
            ")" => "-rrb-".to_string(),
            "[" => "-lsb-".to_string(),
            "]" => "-rsb-".to_string(),
            "{" => "-lcb-".to_string(),
            "}" => "-rcb-".to_string(),
            _ => t,
        })
        .filter(|t| !PTB_PUNCTUATION.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// n-grams
// ---------------------------------------------------------------------------------------------

type NgramCounts<'a> = HashMap<&'a [&'a str], usize>;

fn ngram_counts<'a>(words: &'a [&'a str], max_n: usize) -> NgramCounts<'a> {
    let mut counts = HashMap::new();
    for n in 1..=max_n {
        for window in words.windows(n) {
            *counts.entry(window).or_insert(0) += 1;
        }
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// BLEU
// ---------------------------------------------------------------------------------------------

/// Corpus BLEU-1..4 as pycocoevalcap's `Bleu(4)` (`option="closest"` reference length, ties to the
/// shorter reference; n-gram counts clipped by the maximum count in any one reference; the
/// 1e-15 / 1e-9 smoothing constants of its scorer). BLEU-4 is element 3.
pub fn bleu(pairs: &[CaptionPair]) -> Result<[f64; 4], CaptionMetricError> {
    check(pairs)?;
    const MAX_N: usize = 4;
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let (mut test_len, mut ref_len) = (0.0f64, 0.0f64);
    let mut guess = [0.0f64; MAX_N];
    let mut correct = [0.0f64; MAX_N];
    for pair in pairs {
        let cand: Vec<&str> = pair.candidate.split_whitespace().collect();
        let refs: Vec<Vec<&str>> = pair
            .references
            .iter()
            .map(|r| r.split_whitespace().collect())
            .collect();
        let mut max_ref_counts: HashMap<&[&str], usize> = HashMap::new();
        for r in &refs {
            for (gram, count) in ngram_counts(r, MAX_N) {
                let slot = max_ref_counts.entry(gram).or_insert(0);
                *slot = (*slot).max(count);
            }
        }
        let len = cand.len();
        // Closest reference length; on equal distance the shorter one.
        let closest = refs
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| (l.abs_diff(len), l))
            .unwrap_or(0);
        test_len += len as f64;
        ref_len += closest as f64;
        for (k, g) in guess.iter_mut().enumerate() {
            *g += (len + 1).saturating_sub(k + 1) as f64;
        }
        for (gram, count) in ngram_counts(&cand, MAX_N) {
            let clip = max_ref_counts.get(gram).copied().unwrap_or(0);
            correct[gram.len() - 1] += count.min(clip) as f64;
        }
    }
    let mut scores = [0.0; MAX_N];
    let mut product = 1.0f64;
    for k in 0..MAX_N {
        product *= (correct[k] + TINY) / (guess[k] + SMALL);
        scores[k] = product.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (test_len + TINY) / (ref_len + SMALL);
    if ratio < 1.0 {
        let brevity = (1.0 - 1.0 / ratio).exp();
        for s in &mut scores {
            *s *= brevity;
        }
    }
    Ok(scores)
}

// ---------------------------------------------------------------------------------------------
// ROUGE-L
// ---------------------------------------------------------------------------------------------

fn lcs_length(a: &[&str], b: &[&str]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                previous[j + 1].max(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// ROUGE-L as pycocoevalcap's `Rouge()`: per image, the maximum LCS precision and the maximum LCS
/// recall over the references (taken separately) combine into an F-measure with β = 1.2; the score
/// is the mean over images. Tokens are split on single spaces, as there.
pub fn rouge_l(pairs: &[CaptionPair]) -> Result<f64, CaptionMetricError> {
    check(pairs)?;
    const BETA: f64 = 1.2;
    let mut total = 0.0;
    for pair in pairs {
        let cand: Vec<&str> = pair.candidate.split(' ').collect();
        let (mut best_precision, mut best_recall) = (0.0f64, 0.0f64);
        for reference in &pair.references {
            let tokens: Vec<&str> = reference.split(' ').collect();
            let lcs = lcs_length(&tokens, &cand) as f64;
            best_precision = best_precision.max(lcs / cand.len() as f64);
            best_recall = best_recall.max(lcs / tokens.len() as f64);
        }
        if best_precision != 0.0 && best_recall != 0.0 {
            total += (1.0 + BETA * BETA) * best_precision * best_recall
                / (best_recall + BETA * BETA * best_precision);
        }
    }
    Ok(total / pairs.len() as f64)
}

// ---------------------------------------------------------------------------------------------
// CIDEr-D
// ---------------------------------------------------------------------------------------------

/// TF-IDF vectors per n-gram order, their norms, and pycocoevalcap's "length" (the bigram count).
struct TfIdf<'a> {
    vectors: [HashMap<&'a [&'a str], f64>; 4],
    norms: [f64; 4],
    length: f64,
}

fn tfidf<'a>(
    counts: &NgramCounts<'a>,
    document_frequency: &HashMap<&[&str], f64>,
    log_num_docs: f64,
) -> TfIdf<'a> {
    let mut vectors: [HashMap<&'a [&'a str], f64>; 4] = Default::default();
    let mut norms = [0.0f64; 4];
    let mut length = 0.0;
    for (&gram, &tf) in counts {
        let df = document_frequency
            .get(gram)
            .copied()
            .unwrap_or(0.0)
            .max(1.0)
            .ln();
        let n = gram.len() - 1;
        let weight = tf as f64 * (log_num_docs - df);
        vectors[n].insert(gram, weight);
        norms[n] += weight * weight;
        // pycocoevalcap counts bigrams here (n == 1), not words; kept for parity.
        if n == 1 {
            length += tf as f64;
        }
    }
    for norm in &mut norms {
        *norm = norm.sqrt();
    }
    TfIdf {
        vectors,
        norms,
        length,
    }
}

/// CIDEr-D as pycocoevalcap's `Cider()`: document frequencies over the references of the scored
/// set, TF-IDF n-gram vectors (n = 1..4), the candidate's weights clipped by the reference's,
/// cosine per order times the Gaussian length penalty `exp(-Δ²/(2·6²))`, averaged over the four
/// orders and the references, ×10; the score is the mean over images.
pub fn cider_d(pairs: &[CaptionPair]) -> Result<f64, CaptionMetricError> {
    check(pairs)?;
    const SIGMA: f64 = 6.0;
    let candidates: Vec<Vec<&str>> = pairs
        .iter()
        .map(|p| p.candidate.split_whitespace().collect())
        .collect();
    let references: Vec<Vec<Vec<&str>>> = pairs
        .iter()
        .map(|p| {
            p.references
                .iter()
                .map(|r| r.split_whitespace().collect())
                .collect()
        })
        .collect();
    let candidate_counts: Vec<NgramCounts> =
        candidates.iter().map(|c| ngram_counts(c, 4)).collect();
    let reference_counts: Vec<Vec<NgramCounts>> = references
        .iter()
        .map(|refs| refs.iter().map(|r| ngram_counts(r, 4)).collect())
        .collect();
    let mut document_frequency: HashMap<&[&str], f64> = HashMap::new();
    for refs in &reference_counts {
        let grams: HashSet<&[&str]> = refs.iter().flat_map(|c| c.keys().copied()).collect();
        for gram in grams {
            *document_frequency.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let log_num_docs = (pairs.len() as f64).ln();
    let mut total = 0.0;
    for (cand, refs) in candidate_counts.iter().zip(&reference_counts) {
        let hyp = tfidf(cand, &document_frequency, log_num_docs);
        let mut per_order = [0.0f64; 4];
        for r in refs {
            let reference = tfidf(r, &document_frequency, log_num_docs);
            let delta = hyp.length - reference.length;
            let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
            for (n, order_total) in per_order.iter_mut().enumerate() {
                let mut value = 0.0;
                for (gram, &w) in &hyp.vectors[n] {
                    let wr = reference.vectors[n].get(gram).copied().unwrap_or(0.0);
                    value += w.min(wr) * wr;
                }
                if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
                    value /= hyp.norms[n] * reference.norms[n];
                }
                *order_total += value * penalty;
            }
        }
        let mean_over_orders = per_order.iter().sum::<f64>() / 4.0;
        total += mean_over_orders / refs.len() as f64 * 10.0;
    }
    Ok(total / pairs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_vrt_groups_and_placeholders() {
        let text = "A man (<|VRT_1|><|VRT_2|><|VRT_3|>) rides a bike (<|VRT_9|>, <|VRT_4|>) near \
                    <|Obj_2|> a (small) tree .";
        assert_eq!(
            strip_vrt_markers(text),
            "A man rides a bike near a (small) tree."
        );
        assert_eq!(strip_vrt_markers("a <|VRT_x|> b"), "a <|VRT_x|> b");
    }

    #[test]
    fn tokenizer_splits_punctuation_and_clitics() {
        assert_eq!(
            ptb_tokenize("A dog's toy, isn't it? \"Yes\" (really)."),
            "a dog 's toy is n't it yes -lrb- really -rrb-"
        );
    }
}
