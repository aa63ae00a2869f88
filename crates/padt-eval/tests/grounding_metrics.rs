//! REC / RES metrics on hand-made cases whose answers are worked out in the comments.

use padt_eval::grounding_metrics::{
    box_iou_xywh, mask_overlap, rec_accuracy, res_scores, BoxPrediction, MaskOverlap,
    MaskPrediction, RecSample, ResSample,
};

fn pred(label: &str, bbox: [f64; 4]) -> BoxPrediction {
    BoxPrediction {
        label: label.into(),
        bbox,
    }
}

#[test]
fn box_iou_matches_hand_computation() {
    // 10x10 boxes shifted by 5 in x: I = 50, U = 150.
    let iou = box_iou_xywh(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 10.0, 10.0]);
    assert!((iou - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(
        box_iou_xywh(&[0.0, 0.0, 10.0, 10.0], &[20.0, 0.0, 5.0, 5.0]),
        0.0
    );
    assert_eq!(
        box_iou_xywh(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]),
        0.0
    );
}

#[test]
fn rec_accuracy_counts_only_label_matched_predictions_in_the_reference_protocol() {
    let gt = [100.0, 100.0, 50.0, 50.0];
    let samples = vec![
        // 1: exact echo of the sentence, perfect box: hit in both protocols.
        RecSample {
            sentence: "man on left".into(),
            gt_bbox: gt,
            predictions: vec![pred("man on left", gt)],
        },
        // 2: paraphrased label with a perfect box: miss (reference), hit (lenient).
        RecSample {
            sentence: "woman in red".into(),
            gt_bbox: gt,
            predictions: vec![pred("the woman in red", gt)],
        },
        // 3: two matching predictions, the best has IoU 0.5 exactly (50x50 vs a 50x100 box
        //    covering it: I = 2500, U = 5000): a hit at 0.5.
        RecSample {
            sentence: "dog".into(),
            gt_bbox: gt,
            predictions: vec![
                pred("dog", [0.0, 0.0, 10.0, 10.0]),
                pred("dog", [100.0, 100.0, 50.0, 100.0]),
            ],
        },
        // 4: no prediction at all: miss in both.
        RecSample {
            sentence: "cat".into(),
            gt_bbox: gt,
            predictions: vec![],
        },
    ];
    let acc = rec_accuracy(&samples, 0.5);
    assert_eq!(acc.num_samples, 4);
    assert_eq!(acc.label_matched, 0.5);
    assert_eq!(acc.any_label, 0.75);
    // At 0.75 the 0.5-IoU sample no longer counts.
    let strict = rec_accuracy(&samples, 0.75);
    assert_eq!(strict.label_matched, 0.25);
    assert_eq!(strict.any_label, 0.5);
    assert_eq!(rec_accuracy(&[], 0.5).label_matched, 0.0);
}

#[test]
fn mask_overlap_counts_pixels_and_rejects_size_mismatch() {
    let p = [true, true, false, false];
    let g = [false, true, true, false];
    assert_eq!(
        mask_overlap(&p, &g).unwrap(),
        MaskOverlap {
            intersection: 1,
            union: 3
        }
    );
    assert!(mask_overlap(&p, &g[..3]).is_err());
}

#[test]
fn mean_iou_and_cumulative_iou_differ_as_defined() {
    let o = |intersection, union| MaskOverlap {
        intersection,
        union,
    };
    let m = |label: &str, overlap| MaskPrediction {
        label: label.into(),
        overlap,
    };
    let samples = vec![
        // Small object, IoU 1/2 (I 10, U 20).
        ResSample {
            sentence: "cup".into(),
            gt_pixels: 15,
            predictions: vec![m("cup", o(10, 20)), m("cup", o(5, 20))],
        },
        // Large object, IoU 0.9 (I 900, U 1000); a better wrong-label mask (I 1000, U 1000).
        ResSample {
            sentence: "table".into(),
            gt_pixels: 1000,
            predictions: vec![m("table", o(900, 1000)), m("desk", o(1000, 1000))],
        },
        // Nothing predicted: IoU 0, contributes U = 100 to the cumulative union.
        ResSample {
            sentence: "chair".into(),
            gt_pixels: 100,
            predictions: vec![],
        },
    ];
    let s = res_scores(&samples);
    assert!((s.mean_iou_label_matched - (0.5 + 0.9 + 0.0) / 3.0).abs() < 1e-12);
    assert!((s.mean_iou_any_label - (0.5 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
    assert!((s.cumulative_iou_label_matched - 910.0 / 1120.0).abs() < 1e-12);
    assert!((s.cumulative_iou_any_label - 1010.0 / 1120.0).abs() < 1e-12);
}
