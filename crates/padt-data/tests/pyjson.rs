//! `pyjson`: Python `json.dumps` byte-compatibility and the PaDT JSONL parser.

use padt_data::pyjson::{
    parse_jsonl_line, py_float_repr, record_to_jsonl_line, write_py_str, PyJsonError,
};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_DATA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
        })
}

/// `json.dumps(x)` from CPython 3.11.7 for edge values and random bit patterns.
#[test]
fn floats_print_like_python_repr() {
    let cases: &[(f64, &str)] = &[
        (f64::from_bits(0x0000000000000000), "0.0"),
        (f64::from_bits(0x8000000000000000), "-0.0"),
        (f64::from_bits(0x3ff0000000000000), "1.0"),
        (f64::from_bits(0x403c000000000000), "28.0"),
        (f64::from_bits(0x3ee4f8b588e368f1), "1e-05"),
        (f64::from_bits(0x3f1a36e2eb1c432d), "0.0001"),
        (f64::from_bits(0x3f50624dd2f1a9fc), "0.001"),
        (f64::from_bits(0x4341c37937e08000), "1e+16"),
        (f64::from_bits(0x430c6bf526340000), "1000000000000000.0"),
        (f64::from_bits(0x43118b54f22aeb00), "1234567890123456.0"),
        (f64::from_bits(0x4345ee2a2eb5a5c4), "1.2345678901234568e+16"),
        (f64::from_bits(0x7e41eb2d66005835), "1.5e+300"),
        (f64::from_bits(0x81bac9a7b3b7302f), "-2.5e-300"),
        (f64::from_bits(0x0000000000000001), "5e-324"),
        (
            f64::from_bits(0x7fefffffffffffff),
            "1.7976931348623157e+308",
        ),
        (f64::from_bits(0x40c0dcf7dbf487fa), "8633.936399999995"),
        (f64::from_bits(0x3fb999999999999a), "0.1"),
        (f64::from_bits(0x3fd3333333333334), "0.30000000000000004"),
        (f64::from_bits(0x3fd5555555555555), "0.3333333333333333"),
        (f64::from_bits(0x3fe5555555555555), "0.6666666666666666"),
        (f64::from_bits(0x4059000000000000), "100.0"),
        (f64::from_bits(0x40fe240c9fbe76c9), "123456.789"),
        (f64::from_bits(0x4341c37937e08000), "1e+16"),
        (f64::from_bits(0x4480f0cf064dd592), "1e+22"),
        (f64::from_bits(0x3e7ad7f29abcaf48), "1e-07"),
        (f64::from_bits(0x3f202e4b6ce5dc68), "0.00012345"),
        (f64::from_bits(0xbfe0000000000000), "-0.5"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "Infinity"),
        (f64::NEG_INFINITY, "-Infinity"),
        (
            f64::from_bits(0xf2a74de452e6b438),
            "-1.989032661366619e+244",
        ),
        (f64::from_bits(0x6513270e269e0d37), "7.761117632285041e+178"),
        (f64::from_bits(0x0c5c7fd0a6a3a450), "3.980498358697587e-249"),
        (
            f64::from_bits(0xd23f0824128b2f33),
            "-1.5432835417340557e+88",
        ),
        (
            f64::from_bits(0x1818e811892f902b),
            "1.3647584518757569e-192",
        ),
        (
            f64::from_bits(0x9531985d5d9dc9f8),
            "-1.3701135617873088e-206",
        ),
        (
            f64::from_bits(0xe8e25d940ed90475),
            "-1.7160537630466207e+197",
        ),
        (f64::from_bits(0x36f675cc81e74ef5), "6.294675241195386e-44"),
        (
            f64::from_bits(0x1600a35a099950d8),
            "1.0613447212142254e-202",
        ),
        (f64::from_bits(0x6b0d549b6f03675a), "4.708325160387546e+207"),
        (f64::from_bits(0x3d9c172411e20b8f), "6.387016158513563e-12"),
        (
            f64::from_bits(0x8d116ece1738f7d9),
            "-9.973130378568733e-246",
        ),
        (f64::from_bits(0x0f21ddb66cad4a26), "8.779753225680271e-236"),
        (
            f64::from_bits(0x90c192cfd3ac94af),
            "-5.795503248498993e-228",
        ),
        (
            f64::from_bits(0xf28c105d1fb17c23),
            "-5.988180159386011e+243",
        ),
        (
            f64::from_bits(0xa170b33839263059),
            "-1.306052388527796e-147",
        ),
        (
            f64::from_bits(0x953f48f1a09f76b5),
            "-2.436117699484841e-206",
        ),
        (f64::from_bits(0x0fd630f1f29d0da9), "2.233386999150174e-232"),
        (f64::from_bits(0x95e60af593bd04cf), "-3.51527970626667e-203"),
        (
            f64::from_bits(0x0cb1e29c658cda14),
            "1.5987381841032883e-247",
        ),
        (f64::from_bits(0x3898d190f9ebdacc), "4.6678633181812096e-36"),
        (
            f64::from_bits(0x8e81973e0becd7b0),
            "-8.441872792105456e-239",
        ),
        (
            f64::from_bits(0x2217beaddbc496cb),
            "1.9015657400796622e-144",
        ),
        (f64::from_bits(0x6b4cb2424a23d596), "7.370437700706684e+208"),
        (
            f64::from_bits(0x8a6a63ec24ede6a4),
            "-1.7163996725272777e-258",
        ),
        (f64::from_bits(0x3ff2d8c5236b13fd), "1.1779223807836836"),
        (f64::from_bits(0x429461cd706d4082), "5602572770128.127"),
        (f64::from_bits(0x41daee2a0dcf51ea), "1807263799.2393746"),
        (f64::from_bits(0x3f7765831cdf0963), "0.005712043914117923"),
        (f64::from_bits(0x41b63255e6b9c985), "372397542.7257312"),
        (f64::from_bits(0x41fa8737ac976274), "7121107657.461536"),
        (f64::from_bits(0x3f4387b56108ddae), "0.0005960116996623266"),
        (f64::from_bits(0x41bd96af1f1d0dcc), "496414495.1134918"),
        (f64::from_bits(0x4045612e779b90e8), "42.75923056694029"),
        (f64::from_bits(0x411c6b07769eacee), "465601.865839674"),
        (f64::from_bits(0x3fa283550eb7f030), "0.036158235594456634"),
        (f64::from_bits(0x42d20fe5ab9a6e47), "79437948152249.11"),
        (f64::from_bits(0x3eaa2aaf7e36c603), "7.798296305842437e-07"),
        (f64::from_bits(0x418b64021834f9cf), "57442371.0258671"),
        (f64::from_bits(0x4048c17d49783851), "49.511635955525556"),
    ];
    for &(x, expected) in cases {
        assert_eq!(py_float_repr(x), expected, "bits {:#018x}", x.to_bits());
    }
}

#[test]
fn strings_escape_like_ensure_ascii() {
    let mut s = String::new();
    write_py_str(&mut s, "caf\u{e9} \u{1F600} \u{7f} \u{1} \t\n\"\\ /");
    // json.dumps({'s': ...}) in CPython 3.11.7, the value part.
    assert_eq!(s, r#""caf\u00e9 \ud83d\ude00 \u007f \u0001 \t\n\"\\ /""#);
    let mut s = String::new();
    write_py_str(&mut s, "\u{8}\u{c}\r~ ");
    assert_eq!(s, r#""\b\f\r~ ""#);
}

/// Every line PaDT's scripts wrote parses and re-serialises to the same bytes.
#[test]
fn expected_jsonl_lines_round_trip_byte_for_byte() {
    let dir = golden_dir().join("expected");
    let mut files = 0;
    let mut lines = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let is_padt = name.starts_with("coco_instances")
            || name.starts_with("refcoco")
            || name.starts_with("ric_instances");
        if !is_padt || !name.ends_with(".jsonl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let record = parse_jsonl_line(line, i + 1).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(record_to_jsonl_line(&record), line, "{name} line {}", i + 1);
            lines += 1;
        }
    }
    assert_eq!(files, 15, "expected 2 COCO, 11 refer and 2 RIC files");
    assert!(lines >= 15, "only {lines} lines");
}

#[test]
fn integer_area_stays_integer() {
    let line = r#"{"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "p"}], "answer_template": "t", "objects": [{"patches": [0], "bbox": [0.0, 0.0, 1.0, 1.0], "iscrowd": 1, "area": 678, "rle": {"size": [2, 3], "counts": "06"}, "label": "x"}, {"patches": [1, 2], "bbox": [0.5, 0.25, 1.0, 1e-05], "iscrowd": 0, "area": 678.0, "label": "y"}], "task": "ovd"}"#;
    let record = parse_jsonl_line(line, 1).unwrap();
    assert!(record.objects[0].area_is_int);
    assert!(!record.objects[1].area_is_int);
    assert!(record.objects[1].rle.is_none());
    assert_eq!(record_to_jsonl_line(&record), line);
}

#[test]
fn refering_records_put_task_before_the_answer() {
    let line = r#"{"id": 7, "image": "b.jpg", "conversations": [{"from": "human", "value": "q"}], "task": "refering", "answer_template": "a", "objects": []}"#;
    let record = parse_jsonl_line(line, 1).unwrap();
    assert_eq!(record_to_jsonl_line(&record), line);
}

fn field_error(line: &str) -> (usize, String, String) {
    match parse_jsonl_line(line, 42) {
        Err(PyJsonError::Field {
            line,
            field,
            message,
        }) => (line, field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn errors_name_the_line_and_field() {
    match parse_jsonl_line(r#"{"id": 1, "image": "#, 3) {
        Err(e @ PyJsonError::Json { line: 3, .. }) => {
            assert!(e.to_string().starts_with("line 3: malformed JSON"))
        }
        other => panic!("expected a JSON error, got {other:?}"),
    }
    let base = r#"{"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "p"}], "answer_template": "t", "objects": OBJ, "task": "ovd"}"#;
    let obj = |o: &str| base.replace("OBJ", o);
    let (line, field, _) = field_error(&obj(
        r#"[{"patches": [-1], "bbox": [0, 0, 1, 1], "iscrowd": 0, "area": 1, "label": ""}]"#,
    ));
    assert_eq!((line, field.as_str()), (42, "objects[0].patches"));
    let (_, field, msg) = field_error(&obj(
        r#"[{"patches": [], "bbox": [0, 0, 1], "iscrowd": 0, "area": 1, "label": ""}]"#,
    ));
    assert_eq!(field, "objects[0].bbox");
    assert!(msg.contains("expected 4"), "{msg}");
    let (_, field, _) = field_error(&obj(
        r#"[{"patches": [], "bbox": [0, 0, 1, 1], "iscrowd": 0, "area": 1}]"#,
    ));
    assert_eq!(field, "objects[0].label");
    let (_, field, _) = field_error(&obj(
        r#"[{"patches": [], "bbox": [0, 0, 1, 1], "iscrowd": 0, "area": 1, "label": "", "rle": {"size": [1], "counts": ""}}]"#,
    ));
    assert_eq!(field, "objects[0].rle");
    let (_, field, msg) = field_error(&base.replace("OBJ", "[]").replace("\"ovd\"", "\"det\""));
    assert_eq!(field, "task");
    assert!(msg.contains("det"), "{msg}");
    let (_, field, _) = field_error(
        &base
            .replace("OBJ", "[]")
            .replace("\"id\": 1", "\"id\": \"1\""),
    );
    assert_eq!(field, "id");
    let (_, field, _) = field_error(
        r#"{"id": 1, "image": "a.jpg", "conversations": [], "answer_template": "t", "objects": [], "task": "ovd"}"#,
    );
    assert_eq!(field, "conversations");
    let err = parse_jsonl_line("[1, 2]", 5).unwrap_err();
    assert!(err.to_string().starts_with("line 5:"), "{err}");
}
