//! Every sentence `padt-make-demo` writes names exactly one object of its image, and the
//! pictures show what the annotations say (colour, size class, mask).

use padt_cli::demo::expression::Expression;
use padt_cli::demo::refer::{read, AnnotationEntry};
use padt_cli::demo::scene::{Colour, SceneObject, Shape, Size};
use padt_cli::demo::{make_demo, DemoArgs};
use padt_core::Rle;
use std::collections::{BTreeMap, BTreeSet};

/// The scene object an annotation describes (the test rebuilds it from `instances.json`).
fn object(a: &AnnotationEntry, h: u32, w: u32) -> SceneObject {
    let mask = Rle::from_polygon(&a.segmentation[0], h, w).unwrap();
    SceneObject {
        shape: Shape::ALL[(a.category_id - 1) as usize],
        colour: Colour::parse(&a.colour).unwrap(),
        size: Size::parse(&a.size).unwrap(),
        polygon: a.segmentation[0].clone(),
        bbox: a.bbox,
        area: a.area as u64,
        mask,
    }
}

/// The colour word of an RGB value (nearest of the four hues).
fn colour_of(rgb: [f64; 3]) -> &'static str {
    let [r, g, b] = rgb;
    if r > 150.0 && g > 150.0 && b < 100.0 {
        "yellow"
    } else if r > g && r > b {
        "red"
    } else if g > r && g > b {
        "green"
    } else {
        "blue"
    }
}

#[test]
fn every_sentence_names_exactly_its_object() {
    let d = tempfile::tempdir().unwrap();
    let summary = make_demo(&DemoArgs {
        seed: 5,
        out: d.path().to_path_buf(),
        train_images: 300,
        val_images: 40,
        train_sentences_per_ref: 2,
        shard_size: 1000,
        background: padt_cli::demo::scene::Background::Ramp,
        small_side: (20, 28),
        large_side: (36, 48),
        ramp_swing: 30,
        weights: false,
    })
    .unwrap();
    let (instances, refs) = read(&d.path().join("raw/refer")).unwrap();
    let mut anns: BTreeMap<i64, Vec<&AnnotationEntry>> = BTreeMap::new();
    for a in &instances.annotations {
        anns.entry(a.image_id).or_default().push(a);
    }
    let images: BTreeMap<i64, _> = instances.images.iter().map(|i| (i.id, i)).collect();

    // The pictures: each annotation's mask pixels carry its colour, the box is its mask's, and
    // the size class matches the box.
    for img in &instances.images {
        let png = std::fs::read(d.path().join("raw/images").join(&img.file_name)).unwrap();
        let rgb = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!((rgb.width(), rgb.height()), (img.width, img.height));
        for a in anns.get(&img.id).map(Vec::as_slice).unwrap_or(&[]) {
            let o = object(a, img.height, img.width);
            assert_eq!(o.mask.to_bbox(), a.bbox, "ann {}", a.id);
            assert_eq!(o.mask.area() as f64, a.area, "ann {}", a.id);
            let mut sum = [0f64; 3];
            let mut n = 0.0;
            for (i, &m) in o.mask.decode_row_major().iter().enumerate() {
                if m != 0 {
                    let p = rgb.as_raw();
                    for c in 0..3 {
                        sum[c] += p[i * 3 + c] as f64;
                    }
                    n += 1.0;
                }
            }
            let mean = sum.map(|s| s / n);
            assert_eq!(colour_of(mean), a.colour, "ann {} mean {mean:?}", a.id);
            let side = a.bbox[2].max(a.bbox[3]);
            // Between the small (20-28 px) and large (36-48 px) ranges of the arguments above.
            let expected_size = if side < 32.0 { "small" } else { "large" };
            assert_eq!(expected_size, a.size, "ann {} side {side}", a.id);
        }
    }

    // The sentences.
    let mut sentences = 0;
    let mut kinds = BTreeSet::new();
    let mut split_of_image: BTreeMap<i64, &str> = BTreeMap::new();
    for r in &refs {
        let img = images[&r.image_id];
        let list = &anns[&r.image_id];
        let objects: Vec<SceneObject> = list
            .iter()
            .map(|a| object(a, img.height, img.width))
            .collect();
        let target = list.iter().position(|a| a.id == r.ann_id).unwrap();
        assert_eq!(r.category_id, list[target].category_id);
        assert_eq!(
            *split_of_image.entry(r.image_id).or_insert(&r.split),
            r.split,
            "image {} in two splits",
            r.image_id
        );
        let want = if r.split == "train" { 2 } else { 1 };
        assert!(!r.sentences.is_empty() && r.sentences.len() <= want);
        let texts: BTreeSet<&str> = r.sentences.iter().map(|s| s.sent.as_str()).collect();
        assert_eq!(
            texts.len(),
            r.sentences.len(),
            "repeated sentence in ref {}",
            r.ref_id
        );
        for s in &r.sentences {
            let e = Expression::parse(&s.sent)
                .unwrap_or_else(|| panic!("ref {}: cannot parse {:?}", r.ref_id, s.sent));
            assert_eq!(
                e.resolve(&objects),
                vec![target],
                "ref {} {:?} in image {}",
                r.ref_id,
                s.sent,
                r.image_id
            );
            assert_eq!(s.tokens.join(" "), s.sent);
            kinds.insert((
                e.size.is_some(),
                e.colour.is_some(),
                e.shape.is_some(),
                e.side.is_some(),
            ));
            sentences += 1;
        }
    }
    // Both splits, many sentences, and every kind of expression occurs.
    assert!(summary.splits.iter().all(|s| s.records > 0));
    assert!(sentences > 600, "{sentences}");
    assert!(kinds.len() >= 12, "{kinds:?}");
    assert!(kinds.iter().any(|k| k.3) && kinds.iter().any(|k| !k.3));
}
