//! The PaDT JSONL layout, byte for byte as Python's `json.dumps` writes it, and back.
//!
//! PaDT's preprocess scripts write one `json.dumps(item)` per line, with the defaults
//! `ensure_ascii=True` and separators `", "` / `": "`. This module reproduces that output:
//!
//! - strings: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f` short escapes; every other character
//!   outside `' '..='~'` as `\uXXXX` (lowercase hex), characters above U+FFFF as a UTF-16
//!   surrogate pair;
//! - floats: Python's `repr(float)` (shortest round-trip digits, fixed notation for decimal
//!   exponents -4..=15, else `1e-05` / `1.5e+16`; `NaN`, `Infinity`, `-Infinity`);
//! - ints: decimal; `area` keeps the int/float form the source JSON had
//!   ([`RecordObject::area_is_int`]);
//! - key order: the insertion order of the script that made the record. `process_coco.py`
//!   and `process_ric.py` write `id, image, conversations, answer_template, objects, task`;
//!   `process_refcoco.py` reuses one dict per image and writes
//!   `id, image, conversations, task, answer_template, objects`. Objects are
//!   `patches, bbox, iscrowd, area, rle{size, counts}, label` (`rle` absent when `None`).
//!
//! [`parse_jsonl_line`] reads such a line (any key order, any whitespace) back into a
//! [`Record`], with errors naming the line and the field.

use crate::record::{Record, RecordObject, RleJson, Task};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use thiserror::Error;

/// What is wrong with one PaDT JSONL line. Line numbers start at 1.
#[derive(Debug, Error)]
pub enum PyJsonError {
    /// The line is not JSON.
    #[error("line {line}: malformed JSON: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// serde_json's error (with the column).
        source: serde_json::Error,
    },
    /// A field is missing or has the wrong type or value.
    #[error("line {line}: field `{field}`: {message}")]
    Field {
        /// 1-based line number.
        line: usize,
        /// Dotted path of the field, e.g. `objects[2].bbox`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// One record as `json.dumps(item)` writes it (no trailing newline), with the key order of
/// the script that made it (see the module docs).
pub fn record_to_jsonl_line(record: &Record) -> String {
    let mut out = String::with_capacity(256 + record.objects.len() * 256);
    out.push_str("{\"id\": ");
    let _ = write!(out, "{}", record.id);
    out.push_str(", \"image\": ");
    write_py_str(&mut out, &record.image);
    out.push_str(", \"conversations\": [{\"from\": \"human\", \"value\": ");
    write_py_str(&mut out, &record.prompt);
    out.push_str("}]");
    match record.task {
        Task::Refering => {
            out.push_str(", \"task\": ");
            write_py_str(&mut out, record.task.as_str());
            write_answer_and_objects(&mut out, record);
        }
        Task::Ovd | Task::Ric => {
            write_answer_and_objects(&mut out, record);
            out.push_str(", \"task\": ");
            write_py_str(&mut out, record.task.as_str());
        }
    }
    out.push('}');
    out
}

fn write_answer_and_objects(out: &mut String, record: &Record) {
    out.push_str(", \"answer_template\": ");
    write_py_str(out, &record.answer_template);
    out.push_str(", \"objects\": [");
    for (k, obj) in record.objects.iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        write_object(out, obj);
    }
    out.push(']');
}

fn write_object(out: &mut String, obj: &RecordObject) {
    out.push_str("{\"patches\": [");
    for (i, p) in obj.patches.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{p}");
    }
    out.push_str("], \"bbox\": [");
    for (i, v) in obj.bbox.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_py_float(out, *v);
    }
    let _ = write!(out, "], \"iscrowd\": {}, \"area\": ", obj.iscrowd);
    if obj.area_is_int && obj.area.is_finite() && obj.area.fract() == 0.0 {
        // Integral f64 values print exactly with `{:.0}` (no exponent, no rounding).
        let _ = write!(out, "{:.0}", obj.area);
    } else {
        write_py_float(out, obj.area);
    }
    if let Some(rle) = &obj.rle {
        let _ = write!(
            out,
            ", \"rle\": {{\"size\": [{}, {}], \"counts\": ",
            rle.size[0], rle.size[1]
        );
        write_py_str(out, &rle.counts);
        out.push('}');
    }
    out.push_str(", \"label\": ");
    write_py_str(out, &obj.label);
    out.push('}');
}

/// Appends `s` as a JSON string literal, escaped like Python's `json.dumps(ensure_ascii=True)`.
pub fn write_py_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(x)` for a float, as `json.dumps` writes it (`NaN`, `Infinity`, `-Infinity`
/// for the non-finite values).
pub fn py_float_repr(x: f64) -> String {
    let mut s = String::new();
    write_py_float(&mut s, x);
    s
}

/// Appends Python's `repr(x)` (see [`py_float_repr`]).
pub fn write_py_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like Python's repr: `d.ddde<exp>`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let ndigits = digits.len() as i32;
    // Python's `decpt`: value = 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    if x < 0.0 {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if ndigits > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(&digits);
    } else if decpt >= ndigits {
        out.push_str(&digits);
        for _ in 0..(decpt - ndigits) {
            out.push('0');
        }
        out.push_str(".0");
    } else {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    }
}

/// Reads one PaDT JSONL line (`line_no` is 1-based, used in errors) into a [`Record`].
///
/// Required: `id` (int), `image` (str), `conversations[0].value` (str), `answer_template` (str),
/// `objects` (list), `task` (`"ovd"`, `"refering"` or `"ric"`); per object `patches` (list of
/// non-negative ints), `bbox` (4 numbers), `iscrowd` (int), `area` (number), `label` (str) and
/// optionally `rle` (`{"size": [H, W], "counts": str}`). Other keys are ignored.
pub fn parse_jsonl_line(line: &str, line_no: usize) -> Result<Record, PyJsonError> {
    let value: Value = serde_json::from_str(line).map_err(|source| PyJsonError::Json {
        line: line_no,
        source,
    })?;
    let err = |field: &str, message: &str| PyJsonError::Field {
        line: line_no,
        field: field.to_string(),
        message: message.to_string(),
    };
    let top = value
        .as_object()
        .ok_or_else(|| err("", "the line is not a JSON object"))?;
    let id = get(top, "id", line_no)?
        .as_i64()
        .ok_or_else(|| err("id", "not an integer"))?;
    let image = get_str(top, "image", "image", line_no)?;
    let conversations = get(top, "conversations", line_no)?
        .as_array()
        .ok_or_else(|| err("conversations", "not a list"))?;
    let first = conversations
        .first()
        .ok_or_else(|| err("conversations", "empty list"))?
        .as_object()
        .ok_or_else(|| err("conversations[0]", "not an object"))?;
    let prompt = get_str(first, "value", "conversations[0].value", line_no)?;
    let answer_template = get_str(top, "answer_template", "answer_template", line_no)?;
    let task_str = get_str(top, "task", "task", line_no)?;
    let task = Task::parse(&task_str).ok_or_else(|| {
        err(
            "task",
            &format!("unknown task {task_str:?} (expected ovd, refering or ric)"),
        )
    })?;
    let objects_json = get(top, "objects", line_no)?
        .as_array()
        .ok_or_else(|| err("objects", "not a list"))?;
    let mut objects = Vec::with_capacity(objects_json.len());
    for (k, o) in objects_json.iter().enumerate() {
        objects.push(parse_object(o, k, line_no)?);
    }
    Ok(Record {
        id,
        image,
        prompt,
        answer_template,
        objects,
        task,
    })
}

fn parse_object(value: &Value, k: usize, line_no: usize) -> Result<RecordObject, PyJsonError> {
    let field = |name: &str| format!("objects[{k}].{name}");
    let err = |name: &str, message: &str| PyJsonError::Field {
        line: line_no,
        field: field(name),
        message: message.to_string(),
    };
    let obj = value.as_object().ok_or_else(|| PyJsonError::Field {
        line: line_no,
        field: format!("objects[{k}]"),
        message: "not an object".into(),
    })?;
    let patches_json = get_named(obj, "patches", &field("patches"), line_no)?
        .as_array()
        .ok_or_else(|| err("patches", "not a list"))?;
    let mut patches = Vec::with_capacity(patches_json.len());
    for p in patches_json {
        let v = p
            .as_u64()
            .filter(|&v| v <= u32::MAX as u64)
            .ok_or_else(|| err("patches", &format!("{p} is not a non-negative patch index")))?;
        patches.push(v as u32);
    }
    let bbox_json = get_named(obj, "bbox", &field("bbox"), line_no)?
        .as_array()
        .ok_or_else(|| err("bbox", "not a list"))?;
    if bbox_json.len() != 4 {
        return Err(err(
            "bbox",
            &format!("{} values, expected 4", bbox_json.len()),
        ));
    }
    let mut bbox = [0.0f64; 4];
    for (i, v) in bbox_json.iter().enumerate() {
        bbox[i] = v
            .as_f64()
            .ok_or_else(|| err("bbox", &format!("{v} is not a number")))?;
    }
    let iscrowd = get_named(obj, "iscrowd", &field("iscrowd"), line_no)?
        .as_i64()
        .ok_or_else(|| err("iscrowd", "not an integer"))?;
    let area_json = get_named(obj, "area", &field("area"), line_no)?;
    let area = area_json
        .as_f64()
        .ok_or_else(|| err("area", "not a number"))?;
    let area_is_int = area_json.is_i64() || area_json.is_u64();
    let rle = match obj.get("rle") {
        None | Some(Value::Null) => None,
        Some(r) => Some(parse_rle(r, &field("rle"), line_no)?),
    };
    let label = get_str(obj, "label", &field("label"), line_no)?;
    Ok(RecordObject {
        patches,
        bbox,
        iscrowd,
        area,
        area_is_int,
        rle,
        label,
    })
}

fn parse_rle(value: &Value, field: &str, line_no: usize) -> Result<RleJson, PyJsonError> {
    let err = |message: &str| PyJsonError::Field {
        line: line_no,
        field: field.to_string(),
        message: message.to_string(),
    };
    let obj = value.as_object().ok_or_else(|| err("not an object"))?;
    let size = obj
        .get("size")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or_else(|| err("`size` must be [height, width]"))?;
    let dim = |v: &Value| {
        v.as_u64()
            .filter(|&d| d <= u32::MAX as u64)
            .map(|d| d as u32)
    };
    let (h, w) = match (dim(&size[0]), dim(&size[1])) {
        (Some(h), Some(w)) => (h, w),
        _ => return Err(err("`size` must hold two non-negative integers")),
    };
    let counts = obj
        .get("counts")
        .and_then(Value::as_str)
        .ok_or_else(|| err("`counts` must be a compressed RLE string"))?;
    Ok(RleJson {
        size: [h, w],
        counts: counts.to_string(),
    })
}

fn get<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    line_no: usize,
) -> Result<&'a Value, PyJsonError> {
    get_named(obj, key, key, line_no)
}

fn get_named<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
    line_no: usize,
) -> Result<&'a Value, PyJsonError> {
    obj.get(key).ok_or_else(|| PyJsonError::Field {
        line: line_no,
        field: field.to_string(),
        message: "missing".into(),
    })
}

fn get_str(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    line_no: usize,
) -> Result<String, PyJsonError> {
    get_named(obj, key, field, line_no)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| PyJsonError::Field {
            line: line_no,
            field: field.to_string(),
            message: "not a string".into(),
        })
}
