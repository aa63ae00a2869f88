use padt_train::recipe::{ScheduleConfig, ScheduleKind};
use padt_train::schedule::LrSchedule;

fn schedule(kind: ScheduleKind, warmup_steps: u64, warmup_ratio: f64, total: u64) -> LrSchedule {
    let config = ScheduleConfig {
        kind,
        warmup_steps,
        warmup_ratio,
        num_cycles: 0.5,
    };
    LrSchedule::from_config(&config, 2e-5, total)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-15 + 1e-12 * b.abs()
}

#[test]
fn linear_without_warmup_decays_to_zero() {
    // The reference: lr(s) = 2e-5 · (T − s)/T.
    let s = schedule(ScheduleKind::Linear, 0, 0.0, 10);
    for (step, expect) in [
        (0, 2e-5),
        (1, 1.8e-5),
        (5, 1e-5),
        (9, 2e-6),
        (10, 0.0),
        (12, 0.0),
    ] {
        assert!(
            close(s.lr_at(step), expect),
            "step {step}: {}",
            s.lr_at(step)
        );
    }
}

#[test]
fn linear_with_warmup() {
    // w = 2, T = 10: s/2 during warm-up, then (10 − s)/8.
    let s = schedule(ScheduleKind::Linear, 2, 0.0, 10);
    for (step, factor) in [
        (0, 0.0),
        (1, 0.5),
        (2, 1.0),
        (3, 7.0 / 8.0),
        (6, 0.5),
        (10, 0.0),
    ] {
        assert!(
            close(s.factor(step), factor),
            "step {step}: {}",
            s.factor(step)
        );
    }
}

#[test]
fn cosine_with_warmup() {
    // w = 2, T = 10: progress p = (s − 2)/8, factor = ½(1 + cos(π p)).
    let s = schedule(ScheduleKind::Cosine, 2, 0.0, 10);
    let expect = [
        (0, 0.0),
        (1, 0.5),
        (2, 1.0),
        (4, 0.853_553_390_593_273_8), // ½(1 + cos(π/4))
        (6, 0.5),
        (8, 0.146_446_609_406_726_24), // ½(1 + cos(3π/4))
        (10, 0.0),
    ];
    for (step, factor) in expect {
        assert!(
            close(s.factor(step), factor),
            "step {step}: {}",
            s.factor(step)
        );
    }
    // Past the end the half-cosine does not come back up with num_cycles = 0.5 … but a full
    // cycle does: with num_cycles 1, p = 0.5 → ½(1 + cos 2π·0.5) = 0.
    let mut full = s.clone();
    full.num_cycles = 1.0;
    assert!(close(full.factor(6), 0.0));
    assert!(close(full.factor(10), 1.0));
}

#[test]
fn constant_with_and_without_warmup() {
    let s = schedule(ScheduleKind::Constant, 4, 0.0, 10);
    for (step, factor) in [(0, 0.0), (1, 0.25), (2, 0.5), (4, 1.0), (100, 1.0)] {
        assert!(close(s.factor(step), factor), "step {step}");
    }
    let s = schedule(ScheduleKind::Constant, 0, 0.0, 10);
    assert!(close(s.lr_at(0), 2e-5) && close(s.lr_at(9), 2e-5));
}

#[test]
fn warmup_ratio_rounds_up_and_steps_take_precedence() {
    // HF: warmup = warmup_steps if > 0 else ceil(T · ratio).
    assert_eq!(schedule(ScheduleKind::Linear, 0, 0.1, 95).warmup_steps, 10);
    assert_eq!(schedule(ScheduleKind::Linear, 0, 0.1, 100).warmup_steps, 10);
    assert_eq!(schedule(ScheduleKind::Linear, 3, 0.5, 100).warmup_steps, 3);
    // The schedule is serialisable (it is the scheduler state of a checkpoint).
    let s = schedule(ScheduleKind::Cosine, 3, 0.0, 100);
    let back: LrSchedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}
