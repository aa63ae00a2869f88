//! The Qwen2.5-VL chat template (data-formats.md §4d) and the `<|image_pad|>` expansion.
//!
//! Templates are Hugging Face Jinja, rendered with `minijinja` the way transformers compiles
//! them (`trim_blocks`, `lstrip_blocks`, no trailing newline kept, `raise_exception` defined).
//! The template comes from the model directory (`chat_template.json`, else
//! `tokenizer_config.json`, see [`crate::tokenizer`]); without one, the built-in
//! [`QWEN2_5_VL_CHAT_TEMPLATE`] is used. For PaDT one user turn `[image, text]` with the
//! generation prompt renders to
//!
//! `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n`
//! `<|vision_start|><|image_pad|><|vision_end|>PROMPT<|im_end|>\n<|im_start|>assistant\n`
//!
//! and the processor then replaces the i-th `<|image_pad|>` by `t·gh·gw/4` copies
//! ([`expand_image_pads`], or on ids [`expand_image_pad_ids`]).

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde_json::json;
use std::collections::BTreeMap;

use crate::tokenizer::PadtTokenizer;

/// The image placeholder token.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// Qwen2-VL / Qwen2.5-VL `chat_template.json` (single line in the original).
pub const QWEN2_5_VL_CHAT_TEMPLATE: &str = concat!(
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}",
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}",
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}",
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}",
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}",
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}",
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>",
    "{% elif content['type'] == 'video' or 'video' in content %}",
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}",
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>",
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n",
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
);

/// Errors of template rendering and image-pad expansion.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template did not compile or render.
    #[error("chat template ({origin}): {reason}")]
    Template {
        /// Where the template came from.
        origin: String,
        /// minijinja's message.
        reason: String,
    },
    /// The text has a different number of `<|image_pad|>` than there are images.
    #[error("text has {found} <|image_pad|> placeholders but {images} image(s) were given")]
    ImagePadCount {
        /// Placeholders in the text.
        found: usize,
        /// Images given.
        images: usize,
    },
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    /// Whether the source is [`QWEN2_5_VL_CHAT_TEMPLATE`] (see [`Self::padt_prompt_frame`]).
    builtin_qwen: bool,
}

/// The fixed text around the user prompt in PaDT's rendered prompt:
/// `render_padt_prompt(p) == prefix + p + suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFrame {
    /// Text before the prompt (system turn, user header, vision tokens).
    pub prefix: String,
    /// Text after the prompt (end of turn, assistant header).
    pub suffix: String,
    /// `true` when this holds for every prompt without rendering: the template is the built-in
    /// Qwen2.5-VL one, which prints the text content verbatim and branches on nothing in it.
    /// Otherwise a rendered prompt must be checked against the frame.
    pub verbatim: bool,
}

const TEMPLATE_NAME: &str = "chat";

/// serde_json → minijinja value (maps become sorted maps; the templates only look keys up).
fn to_jinja(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(to_jinja).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), to_jinja(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

impl ChatTemplate {
    /// Compiles a Hugging Face chat template; `origin` names it in errors.
    pub fn new(source: &str, origin: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| ChatError::Template {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME.to_string(), source.to_string())
            .map_err(|e| ChatError::Template {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
            builtin_qwen: source == QWEN2_5_VL_CHAT_TEMPLATE,
        })
    }

    /// The built-in Qwen2.5-VL template.
    pub fn qwen2_5_vl() -> Self {
        Self::new(QWEN2_5_VL_CHAT_TEMPLATE, "built-in Qwen2.5-VL")
            .expect("the built-in template compiles")
    }

    /// The tokenizer directory's template, or the built-in one when it has none.
    pub fn for_tokenizer(tokenizer: &PadtTokenizer) -> Result<Self, ChatError> {
        match tokenizer.chat_template() {
            Some(src) => Self::new(src, &tokenizer.path().display().to_string()),
            None => Ok(Self::qwen2_5_vl()),
        }
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders `messages` (HF chat format) like `apply_chat_template(tokenize=False)`.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let err = |e: JinjaError| ChatError::Template {
            origin: self.origin.clone(),
            reason: format!("{e:#}"),
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(err)?;
        let mut ctx = BTreeMap::new();
        ctx.insert("messages".to_string(), to_jinja(messages));
        ctx.insert(
            "add_generation_prompt".to_string(),
            Value::from(add_generation_prompt),
        );
        template.render(Value::from(ctx)).map_err(err)
    }

    /// PaDT's prompt: one user turn `[image, text]`, with the generation prompt, pads not
    /// expanded yet.
    pub fn render_padt_prompt(&self, prompt: &str) -> Result<String, ChatError> {
        self.render(&padt_messages(prompt), true)
    }

    /// Splits PaDT's rendered prompt into the text before and after the user prompt, found by
    /// rendering two different marker prompts. `None` when the template does not print the
    /// prompt exactly once, verbatim, between fixed text.
    pub fn padt_prompt_frame(&self) -> Option<PromptFrame> {
        const MARKER: &str = "\u{1}padt prompt marker\u{2}";
        let rendered = self.render_padt_prompt(MARKER).ok()?;
        let (prefix, suffix) = rendered.split_once(MARKER)?;
        if suffix.contains(MARKER) {
            return None;
        }
        let frame = PromptFrame {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            verbatim: self.builtin_qwen,
        };
        for other in ["", "x <|im_end|>\n{{ 1 }}"] {
            if !frame.holds(other, &self.render_padt_prompt(other).ok()?) {
                return None;
            }
        }
        Some(frame)
    }
}

impl PromptFrame {
    /// Whether `rendered` is `prefix + prompt + suffix`.
    pub fn holds(&self, prompt: &str, rendered: &str) -> bool {
        rendered.len() == self.prefix.len() + prompt.len() + self.suffix.len()
            && rendered.starts_with(&self.prefix)
            && rendered.ends_with(&self.suffix)
            && &rendered[self.prefix.len()..rendered.len() - self.suffix.len()] == prompt
    }

    /// `prefix + prompt + suffix`.
    pub fn text(&self, prompt: &str) -> String {
        let mut text = String::with_capacity(self.prefix.len() + prompt.len() + self.suffix.len());
        text.push_str(&self.prefix);
        text.push_str(prompt);
        text.push_str(&self.suffix);
        text
    }
}

/// The chat input PaDT builds for a record: `[{"role": "user", "content": [{"type": "image"},
/// {"type": "text", "text": prompt}]}]`.
pub fn padt_messages(prompt: &str) -> serde_json::Value {
    json!([{
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": prompt}],
    }])
}

/// Replaces the i-th `<|image_pad|>` of `text` by `counts[i]` copies.
pub fn expand_image_pads(text: &str, counts: &[usize]) -> Result<String, ChatError> {
    let pieces: Vec<&str> = text.split(IMAGE_PAD).collect();
    if pieces.len() - 1 != counts.len() {
        return Err(ChatError::ImagePadCount {
            found: pieces.len() - 1,
            images: counts.len(),
        });
    }
    let extra: usize = counts.iter().sum::<usize>() * IMAGE_PAD.len();
    let mut out = String::with_capacity(text.len() + extra);
    out.push_str(pieces[0]);
    for (piece, &n) in pieces[1..].iter().zip(counts) {
        for _ in 0..n {
            out.push_str(IMAGE_PAD);
        }
        out.push_str(piece);
    }
    Ok(out)
}

/// The same expansion on token ids: the i-th `image_pad_id` becomes `counts[i]` copies.
/// Equal to tokenizing the expanded text, since `<|image_pad|>` is an added token.
pub fn expand_image_pad_ids(
    ids: &[u32],
    image_pad_id: u32,
    counts: &[usize],
) -> Result<Vec<u32>, ChatError> {
    let found = ids.iter().filter(|&&id| id == image_pad_id).count();
    if found != counts.len() {
        return Err(ChatError::ImagePadCount {
            found,
            images: counts.len(),
        });
    }
    let mut out = Vec::with_capacity(ids.len() + counts.iter().sum::<usize>());
    let mut next = counts.iter();
    for &id in ids {
        if id == image_pad_id {
            let n = *next.next().expect("counted above");
            out.extend(std::iter::repeat_n(image_pad_id, n));
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_template_renders_padt_prompt() {
        let t = ChatTemplate::qwen2_5_vl();
        let s = t.render_padt_prompt("Please describe this image.").unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>Please describe this image.<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let no_gen = t.render(&padt_messages("x"), false).unwrap();
        assert!(no_gen.ends_with("x<|im_end|>\n"));
    }

    #[test]
    fn prompt_frame_of_builtin_and_other_templates() {
        let t = ChatTemplate::qwen2_5_vl();
        let f = t.padt_prompt_frame().unwrap();
        assert!(f.verbatim);
        assert_eq!(
            f.prefix,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>"
        );
        assert_eq!(f.suffix, "<|im_end|>\n<|im_start|>assistant\n");
        let p = "Find \"the dog\" {{ x }} <|im_end|>";
        assert_eq!(f.text(p), t.render_padt_prompt(p).unwrap());
        assert!(f.holds(p, &t.render_padt_prompt(p).unwrap()));
        // The same text from another source: a frame, checked per prompt.
        let same = ChatTemplate::new(&format!("{QWEN2_5_VL_CHAT_TEMPLATE} "), "copy").unwrap();
        assert!(!same.padt_prompt_frame().unwrap().verbatim);
        // A template that prints the prompt twice, or changes it, has no frame.
        let twice = "{% for m in messages %}{{ m['content'][1]['text'] }}{{ m['content'][1]['text'] }}{% endfor %}";
        assert!(ChatTemplate::new(twice, "t")
            .unwrap()
            .padt_prompt_frame()
            .is_none());
        let upper = "{% for m in messages %}{{ m['content'][1]['text'] | upper }}{% endfor %}";
        assert!(ChatTemplate::new(upper, "t")
            .unwrap()
            .padt_prompt_frame()
            .is_none());
    }

    #[test]
    fn system_and_string_content() {
        let t = ChatTemplate::qwen2_5_vl();
        let m = json!([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]);
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        );
    }

    #[test]
    fn raise_exception_and_bad_templates_are_errors() {
        let t = ChatTemplate::new("{{ raise_exception('no') }}", "test").unwrap();
        let e = t.render(&json!([]), true).unwrap_err().to_string();
        assert!(e.contains("no"), "{e}");
        assert!(ChatTemplate::new("{% if %}", "broken").is_err());
    }

    #[test]
    fn image_pad_expansion() {
        let s = "a<|image_pad|>b<|image_pad|>";
        assert_eq!(
            expand_image_pads(s, &[2, 1]).unwrap(),
            "a<|image_pad|><|image_pad|>b<|image_pad|>"
        );
        assert!(matches!(
            expand_image_pads(s, &[2]),
            Err(ChatError::ImagePadCount {
                found: 2,
                images: 1
            })
        ));
        assert_eq!(
            expand_image_pad_ids(&[1, 9, 2], 9, &[3]).unwrap(),
            vec![1, 9, 9, 9, 2]
        );
        assert!(expand_image_pad_ids(&[1, 2], 9, &[3]).is_err());
    }
}
