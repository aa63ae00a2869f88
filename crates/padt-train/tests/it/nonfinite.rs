use padt_train::nonfinite::{NonFiniteGuard, StepVerdict};

#[test]
fn skips_non_finite_steps_and_aborts_past_the_limit() {
    let mut guard = NonFiniteGuard::new(2, 0);
    assert_eq!(guard.check(0, 1.5, 0.7), Ok(StepVerdict::Apply));
    assert_eq!(guard.check(1, f64::NAN, 0.7), Ok(StepVerdict::Skip));
    assert_eq!(guard.check(2, 1.2, f64::INFINITY), Ok(StepVerdict::Skip));
    assert_eq!(guard.check(3, 1.1, 0.5), Ok(StepVerdict::Apply));
    assert_eq!(guard.skipped(), 2);
    assert_eq!(guard.skipped_steps(), &[1, 2]);
    let err = guard.check(4, f64::NEG_INFINITY, 0.5).unwrap_err();
    assert_eq!(err.skipped, 3);
    assert_eq!(err.last_step, 4);
    let msg = err.to_string();
    assert!(
        msg.contains("limit 2") && msg.contains("max_nonfinite_skips"),
        "{msg}"
    );
}

#[test]
fn skips_before_a_resume_count_and_zero_means_no_tolerance() {
    let mut guard = NonFiniteGuard::new(3, 3);
    assert!(guard.check(10, f64::NAN, 1.0).is_err());
    let mut strict = NonFiniteGuard::new(0, 0);
    assert_eq!(strict.check(0, 1.0, 1.0), Ok(StepVerdict::Apply));
    assert!(strict.check(1, 1.0, f64::NAN).is_err());
}
