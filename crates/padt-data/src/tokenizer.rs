//! The Qwen2.5-VL tokenizer extended the way PaDT extends it (padt-reference.md §1.4,
//! data-formats.md §4e).
//!
//! Loading a model directory:
//! 1. `tokenizer.json` through the `tokenizers` crate (NFC, the Qwen2 split regex, byte-level
//!    BPE; added tokens are split out of the text before BPE).
//! 2. PaDT's `VisonTextProcessingClass.prepare(V)`: special, un-normalised
//!    `<|empty_token_k|>` tokens pad the tokenizer up to the embedding rows `V` (151936 for 3B,
//!    152064 for 7B). A tokenizer that already holds `<|empty_token_0|>` is taken as padded.
//! 3. `<|VRT_i|>` as non-special, un-normalised added tokens in increasing order, so
//!    `<|VRT_i|>` = `V + i` (the "local" VRT id). [`PadtTokenizer::ensure_vrt_count`] adds them
//!    lazily, as PaDT's processor does when it sees an image. A `<|VRT_n|>` literal with
//!    `n >= vrt_count` is not a token: it is BPE-encoded as text (the golden says so).
//!
//! `tokenizer_config.json` gives the eos / pad tokens and, with `chat_template.json`, the chat
//! template (see [`crate::chat`]).
//!
//! # API
//! - [`PadtTokenizer::from_dir`]`(dir, embed_size, vrt_count)`, [`PadtTokenizer::from_files`];
//! - [`PadtTokenizer::encode`] / [`PadtTokenizer::encode_with_tokens`] (no special tokens added,
//!   as PaDT calls it), [`PadtTokenizer::decode`];
//! - ids of the tokens the pipeline needs: [`SpecialIds`].

use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::{AddedToken, Tokenizer};

use crate::vrt::vrt_token;

/// Prefix of PaDT's padding tokens (`<|empty_token_k|>`).
pub const EMPTY_TOKEN_PREFIX: &str = "<|empty_token_";

/// Errors of the tokenizer layer. Each names the file or text it is about.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `tokenizer.json` did not load.
    #[error("cannot load tokenizer {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What the `tokenizers` crate said.
        reason: String,
    },
    /// A JSON config file is malformed or misses a needed key.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The tokenizer does not fit the model's embedding table.
    #[error("tokenizer {path}: {reason}")]
    Vocab {
        /// The tokenizer file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer failed on {what}: {reason}")]
    Codec {
        /// What was being encoded / decoded (shortened).
        what: String,
        /// What the `tokenizers` crate said.
        reason: String,
    },
}

/// Ids of the tokens the data pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// The pad token (`<|endoftext|>` for Qwen), used for left/right padding.
    pub pad: u32,
    /// The eos token (`<|im_end|>`), appended to every completion.
    pub eos: u32,
    /// `<|image_pad|>`, expanded to one copy per merged image token.
    pub image_pad: u32,
    /// `<|vision_start|>`.
    pub vision_start: u32,
    /// `<|vision_end|>`.
    pub vision_end: u32,
}

/// The Qwen2.5-VL tokenizer padded to the embedding rows and extended with VRT tokens.
#[derive(Clone)]
pub struct PadtTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    /// `V`: embedding rows; `<|VRT_i|>` = `V + i`.
    embed_size: u32,
    /// Tokenizer length before PaDT's padding (151665 for Qwen2.5-VL).
    base_len: u32,
    vrt_count: u32,
    eos_token: String,
    pad_token: String,
    special: SpecialIds,
    chat_template: Option<String>,
}

impl std::fmt::Debug for PadtTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PadtTokenizer")
            .field("path", &self.path)
            .field("embed_size", &self.embed_size)
            .field("base_len", &self.base_len)
            .field("vrt_count", &self.vrt_count)
            .finish_non_exhaustive()
    }
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Config {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// A token entry of `tokenizer_config.json`: either a string or `{"content": ...}`.
fn token_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The chat template of a `tokenizer_config.json` / `chat_template.json` value: a string, or
/// HF's list of `{name, template}` (the `default` entry).
fn template_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn shorten(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    format!("{s:?}")
}

impl PadtTokenizer {
    /// Loads `dir/tokenizer.json` and `dir/tokenizer_config.json` (and `dir/chat_template.json`
    /// when present), pads to `embed_size` rows and adds `vrt_count` VRT tokens.
    /// A `chat_template.jinja` file (newer transformers save the template that way) wins over
    /// both JSON files.
    pub fn from_dir(dir: &Path, embed_size: u32, vrt_count: u32) -> Result<Self, TokenizerError> {
        let chat = dir.join("chat_template.json");
        let mut tok = Self::from_files(
            &dir.join("tokenizer.json"),
            &dir.join("tokenizer_config.json"),
            chat.is_file().then_some(chat.as_path()),
            embed_size,
            vrt_count,
        )?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|source| TokenizerError::Io {
                path: jinja,
                source,
            })?;
            tok.chat_template = Some(text);
        }
        Ok(tok)
    }

    /// Like [`Self::from_dir`] with explicit file paths.
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: &Path,
        chat_template_json: Option<&Path>,
        embed_size: u32,
        vrt_count: u32,
    ) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(tokenizer_json).map_err(|e| TokenizerError::Load {
            path: tokenizer_json.to_path_buf(),
            reason: e.to_string(),
        })?;
        let config = read_json(tokenizer_config)?;
        let mut chat_template = config.get("chat_template").and_then(template_string);
        if let Some(path) = chat_template_json {
            // The processor's template wins over the tokenizer's (transformers 4.50).
            if let Some(t) = read_json(path)?
                .get("chat_template")
                .and_then(template_string)
            {
                chat_template = Some(t);
            }
        }
        let named = |key: &str| -> Result<String, TokenizerError> {
            config
                .get(key)
                .and_then(token_string)
                .ok_or_else(|| TokenizerError::Config {
                    path: tokenizer_config.to_path_buf(),
                    reason: format!("missing or null `{key}`"),
                })
        };
        let eos_token = named("eos_token")?;
        let pad_token = named("pad_token")?;
        Self::from_tokenizer(
            inner,
            tokenizer_json,
            eos_token,
            pad_token,
            chat_template,
            embed_size,
            vrt_count,
        )
    }

    /// Wraps an already loaded `tokenizers::Tokenizer` (not yet padded, or padded by PaDT).
    pub fn from_tokenizer(
        mut inner: Tokenizer,
        path: &Path,
        eos_token: String,
        pad_token: String,
        chat_template: Option<String>,
        embed_size: u32,
        vrt_count: u32,
    ) -> Result<Self, TokenizerError> {
        let vocab_err = |reason: String| TokenizerError::Vocab {
            path: path.to_path_buf(),
            reason,
        };
        let first_empty = format!("{EMPTY_TOKEN_PREFIX}0|>");
        let base_len = match inner.token_to_id(&first_empty) {
            // Released checkpoints may ship the padded tokenizer.
            Some(id) => id,
            None => {
                let len = inner.get_vocab_size(true) as u32;
                if len > embed_size {
                    return Err(vocab_err(format!(
                        "{len} tokens do not fit the {embed_size} embedding rows"
                    )));
                }
                let pads: Vec<AddedToken> = (0..embed_size - len)
                    .map(|k| {
                        AddedToken::from(format!("{EMPTY_TOKEN_PREFIX}{k}|>"), true)
                            .normalized(false)
                    })
                    .collect();
                inner.add_special_tokens(&pads);
                len
            }
        };
        if inner.get_vocab_size(true) as u32 != embed_size {
            return Err(vocab_err(format!(
                "after padding the tokenizer has {} tokens, the model {embed_size} embedding rows",
                inner.get_vocab_size(true)
            )));
        }
        let id_of = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| vocab_err(format!("has no token {tok:?}")))
        };
        let special = SpecialIds {
            pad: id_of(&pad_token)?,
            eos: id_of(&eos_token)?,
            image_pad: id_of("<|image_pad|>")?,
            vision_start: id_of("<|vision_start|>")?,
            vision_end: id_of("<|vision_end|>")?,
        };
        let mut tok = PadtTokenizer {
            inner,
            path: path.to_path_buf(),
            embed_size,
            base_len,
            vrt_count: 0,
            eos_token,
            pad_token,
            special,
            chat_template,
        };
        tok.ensure_vrt_count(vrt_count)?;
        Ok(tok)
    }

    /// Adds `<|VRT_i|>` tokens until `count` exist (PaDT's `set_image_grid_thw`); never removes.
    pub fn ensure_vrt_count(&mut self, count: u32) -> Result<(), TokenizerError> {
        if count <= self.vrt_count {
            return Ok(());
        }
        let tokens: Vec<AddedToken> = (self.vrt_count..count)
            .map(|i| AddedToken::from(vrt_token(i), false).normalized(false))
            .collect();
        self.inner.add_tokens(&tokens);
        for i in [self.vrt_count, count - 1] {
            let got = self.inner.token_to_id(&vrt_token(i));
            if got != Some(self.embed_size + i) {
                return Err(TokenizerError::Vocab {
                    path: self.path.clone(),
                    reason: format!(
                        "{} got id {got:?}, expected {} (a token of that name already existed?)",
                        vrt_token(i),
                        self.embed_size + i
                    ),
                });
            }
        }
        self.vrt_count = count;
        Ok(())
    }

    /// Token ids of `text` (added tokens split out first, no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Codec {
                what: shorten(text),
                reason: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether `encode(prefix + text + suffix)` is `encode(prefix) ++ encode(text) ++
    /// encode(suffix)` for every `text`, so that fixed text around a variable part can be
    /// tokenized once.
    ///
    /// The tokenizer first splits the text at added tokens (leftmost-longest matches on the raw
    /// text), then normalises, pre-tokenizes and BPE-encodes each piece on its own. The ids
    /// concatenate when:
    /// - every added token is matched as-is (not normalised, no `lstrip` / `rstrip` /
    ///   `single_word`, special tokens not encoded as text), so matching is plain substring
    ///   search on the raw text;
    /// - `prefix` (if not empty) ends with an added token and `suffix` (if not empty) starts with
    ///   one, so the variable text is a piece of its own;
    /// - no added token can straddle a seam whatever the text is: no proper prefix of an added
    ///   token ends `prefix`, and no proper suffix of one starts `suffix`.
    ///
    /// Also checked on a few texts, as a guard.
    pub fn splits_at_added_tokens(&self, prefix: &str, suffix: &str) -> bool {
        let added = self.inner.get_added_vocabulary();
        if added.get_encode_special_tokens() {
            return false;
        }
        let tokens = added.get_added_tokens_decoder();
        if tokens
            .values()
            .any(|t| t.normalized || t.lstrip || t.rstrip || t.single_word)
        {
            return false;
        }
        let is_added = |id: Option<&u32>, edge: &dyn Fn(&str) -> bool| {
            id.and_then(|id| tokens.get(id))
                .is_some_and(|t| edge(&t.content))
        };
        let (Ok(prefix_ids), Ok(suffix_ids)) = (self.encode(prefix), self.encode(suffix)) else {
            return false;
        };
        if !prefix.is_empty() && !is_added(prefix_ids.last(), &|c| prefix.ends_with(c)) {
            return false;
        }
        if !suffix.is_empty() && !is_added(suffix_ids.first(), &|c| suffix.starts_with(c)) {
            return false;
        }
        let straddles = tokens.values().any(|t| {
            let c = t.content.as_str();
            c.char_indices().skip(1).any(|(k, _)| {
                (!prefix.is_empty() && prefix.ends_with(&c[..k]))
                    || (!suffix.is_empty() && suffix.starts_with(&c[k..]))
            })
        });
        if straddles {
            return false;
        }
        [
            "",
            " a",
            "a ",
            "\u{e9}\u{301} \n",
            "<|im_end|>",
            "<|",
            "|>",
            " 12 ",
        ]
        .iter()
        .all(|text| {
            let joined = format!("{prefix}{text}{suffix}");
            let parts = self.encode(text).map(|mid| {
                let mut ids = prefix_ids.clone();
                ids.extend(mid);
                ids.extend(&suffix_ids);
                ids
            });
            matches!((self.encode(&joined), parts), (Ok(a), Ok(b)) if a == b)
        })
    }

    /// Token ids and token strings (byte-level symbols, e.g. `Ġare`) of `text`.
    pub fn encode_with_tokens(
        &self,
        text: &str,
    ) -> Result<(Vec<u32>, Vec<String>), TokenizerError> {
        // `encode_fast` leaves the token strings empty; the full path fills them.
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Codec {
                what: shorten(text),
                reason: e.to_string(),
            })?;
        Ok((enc.get_ids().to_vec(), enc.get_tokens().to_vec()))
    }

    /// Text of `ids`; `skip_special` drops special tokens (the Qwen specials and the
    /// `<|empty_token_k|>` padding, not the VRTs).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Codec {
                what: format!("{} ids", ids.len()),
                reason: e.to_string(),
            })
    }

    /// The token string of one id (`None` when out of the vocabulary).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// `V`, the embedding rows (= the id of `<|VRT_0|>`).
    pub fn embed_size(&self) -> u32 {
        self.embed_size
    }

    /// Tokenizer length before PaDT's `<|empty_token_k|>` padding.
    pub fn base_len(&self) -> u32 {
        self.base_len
    }

    /// How many `<|VRT_i|>` tokens exist.
    pub fn vrt_count(&self) -> u32 {
        self.vrt_count
    }

    /// Ids of the pad / eos / vision tokens.
    pub fn special_ids(&self) -> SpecialIds {
        self.special
    }

    /// The eos token string (`<|im_end|>`).
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The pad token string (`<|endoftext|>`).
    pub fn pad_token(&self) -> &str {
        &self.pad_token
    }

    /// The chat template from `chat_template.json` / `tokenizer_config.json`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The `tokenizer.json` this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// The embedding rows `V` a model directory declares: `vocab_size` of its `config.json`
/// (top level, or `text_config.vocab_size`). `None` when the directory has no `config.json`.
pub fn model_embed_size(dir: &Path) -> Result<Option<u32>, TokenizerError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let config = read_json(&path)?;
    let v = config
        .get("vocab_size")
        .or_else(|| config.get("text_config").and_then(|t| t.get("vocab_size")))
        .and_then(Value::as_u64)
        .ok_or_else(|| TokenizerError::Config {
            path: path.clone(),
            reason: "no integer `vocab_size` (top level or text_config)".into(),
        })?;
    u32::try_from(v)
        .map(Some)
        .map_err(|_| TokenizerError::Config {
            path,
            reason: format!("vocab_size {v} is too large"),
        })
}
