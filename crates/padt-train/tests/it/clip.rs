use burn::optim::GradientsParams;

use padt_train::clip::{clip_grad_norm, global_grad_norm};

use crate::common::{linear_loss, tiny, values1, values2, Inner, B};

const CW: [f32; 6] = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5];
const CB: [f32; 2] = [3.0, -2.0];

fn hand_norm() -> f64 {
    CW.iter()
        .chain(CB.iter())
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn global_norm_is_the_norm_over_all_parameters() {
    let m = tiny(0.2);
    let grads = GradientsParams::from_grads::<B, _>(linear_loss(&m, &CW, &CB).backward(), &m);
    let norm = global_grad_norm::<B, _>(&m, &grads);
    // sqrt(0.25 + 1 + 4 + 0 + 2.25 + 0.25 + 9 + 4) = sqrt(20.75)
    assert!((hand_norm() - 20.75f64.sqrt()).abs() < 1e-12);
    assert!((norm - hand_norm()).abs() < 1e-5, "{norm}");
}

#[test]
fn clipping_scales_every_gradient_by_one_factor() {
    let m = tiny(0.2);
    let grads = GradientsParams::from_grads::<B, _>(linear_loss(&m, &CW, &CB).backward(), &m);
    let (grads, outcome) = clip_grad_norm::<B, _>(&m, grads, Some(1.0));
    let total = hand_norm();
    let scale = 1.0 / (total + 1e-6);
    assert!((outcome.total_norm - total).abs() < 1e-5);
    assert!((outcome.scale - scale).abs() < 1e-7, "{}", outcome.scale);
    let gw = values2(grads.get::<Inner, 2>(m.w.id).unwrap());
    let gb = values1(grads.get::<Inner, 1>(m.b.id).unwrap());
    for (g, c) in gw.iter().chain(gb.iter()).zip(CW.iter().chain(CB.iter())) {
        let expect = *c as f64 * scale;
        assert!((*g as f64 - expect).abs() < 1e-6, "{g} vs {expect}");
    }
    // The clipped gradients have norm max_norm (up to the 1e-6 guard).
    let after = global_grad_norm::<B, _>(&m, &grads);
    assert!((after - 1.0).abs() < 1e-5, "{after}");
}

#[test]
fn small_gradients_and_no_limit_are_left_alone() {
    let m = tiny(0.2);
    let grads = GradientsParams::from_grads::<B, _>(linear_loss(&m, &CW, &CB).backward(), &m);
    let (grads, outcome) = clip_grad_norm::<B, _>(&m, grads, Some(100.0));
    assert_eq!(outcome.scale, 1.0);
    assert_eq!(values1(grads.get::<Inner, 1>(m.b.id).unwrap()), CB.to_vec());
    let (grads, outcome) = clip_grad_norm::<B, _>(&m, grads, None);
    assert_eq!(outcome.scale, 1.0);
    assert!((outcome.total_norm - hand_norm()).abs() < 1e-5);
    assert_eq!(values2(grads.get::<Inner, 2>(m.w.id).unwrap()), CW.to_vec());
}

#[test]
fn non_finite_gradients_report_a_non_finite_norm_and_are_not_scaled() {
    let m = tiny(0.2);
    let mut cw = CW;
    cw[2] = f32::NAN;
    let grads = GradientsParams::from_grads::<B, _>(linear_loss(&m, &cw, &CB).backward(), &m);
    let (grads, outcome) = clip_grad_norm::<B, _>(&m, grads, Some(1.0));
    assert!(!outcome.is_finite());
    assert_eq!(outcome.scale, 1.0);
    assert_eq!(values1(grads.get::<Inner, 1>(m.b.id).unwrap()), CB.to_vec());
}
