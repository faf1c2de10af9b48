//! ONNX Runtime as a runtime: outputs equal shears' engine, and latency measurement runs.
//!
//! These tests need an ONNX Runtime library named by `$ORT_DYLIB_PATH`. Without one they
//! print why and pass, unless `$SHEARS_ORT_REQUIRED` is set (`.ci/run` sets it once it has
//! installed the `onnxruntime` wheel), where they fail.

use shears::runtime::{compare, measure, Budget, Runtime, RuntimeError, RuntimeKind};
use shears::zoo::{build, init_weights, Arch};
use shears::Error;

/// ONNX Runtime on 2 threads, or `None` (printing why) when no library is available and it
/// is not required.
fn ort() -> Option<Runtime> {
    let required = std::env::var_os("SHEARS_ORT_REQUIRED").is_some_and(|v| !v.is_empty());
    if std::env::var_os("ORT_DYLIB_PATH").is_none() && !required {
        eprintln!("skipped: ORT_DYLIB_PATH is not set (no ONNX Runtime library to test)");
        return None;
    }
    match Runtime::open(RuntimeKind::OnnxRuntime, Some(2), None) {
        Ok(r) => Some(r),
        Err(e) if !required => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("SHEARS_ORT_REQUIRED is set but ONNX Runtime does not load: {e}"),
    }
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = a
        .iter()
        .fold(0f64, |m, x| m.max(f64::from(x.abs())))
        .max(1e-6);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())))
        / scale
}

#[test]
fn ort_outputs_equal_the_engine_on_exported_models() {
    let Some(ort) = ort() else { return };
    let shears = Runtime::open(RuntimeKind::Shears, Some(2), None).unwrap();
    for arch in [Arch::LeNet5, Arch::ResNet20] {
        let g = build(arch, &arch.default_config()).unwrap();
        let w = init_weights(&g, Some(arch), 1);
        let x = shears::report::random_inputs(&g, 3, 7);
        let mut a = shears.prepare(&g, &w).unwrap();
        let mut b = ort.prepare(&g, &w).unwrap();
        let ya = a.run(&x).unwrap();
        let yb = b.run(&x).unwrap();
        assert_eq!(ya.shape(), yb.shape(), "{arch}");
        let d = max_rel_diff(ya.data(), yb.data());
        assert!(
            d <= 1e-4,
            "{arch}: ORT differs from the engine by {d:e} (relative)"
        );
    }
    assert_eq!(ort.kind(), RuntimeKind::OnnxRuntime);
    assert_eq!(ort.threads(), 2);
    assert!(ort.version().starts_with("1."), "{}", ort.version());
}

#[test]
fn ort_latency_is_measured_within_the_budget_in_alternating_blocks() {
    let Some(ort) = ort() else { return };
    let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
    let w = init_weights(&g, Some(Arch::LeNet5), 0);
    let mut a = ort.prepare(&g, &w).unwrap();
    let mut b = ort.prepare(&g, &w).unwrap();
    let budget = Budget::seconds(0.05);
    let (la, lb) = compare(&mut a, &mut b, &g, 4, &budget).unwrap();
    for l in [&la, &lb] {
        assert_eq!(l.batch, 4);
        assert!(l.iters >= Budget::MIN_PASSES);
        assert!(l.min_ms <= l.median_ms && l.median_ms <= l.max_ms);
        // The budget is spent: the timed passes add up to at least the budget.
        assert!(l.max_ms * l.iters as f64 >= 1e3 * budget.seconds);
    }
    let capped = Budget {
        max_passes: Some(4),
        ..budget
    };
    assert_eq!(measure(&mut a, &g, 1, &capped).unwrap().iters, 4);
}

#[test]
fn a_missing_library_names_the_path_looked_at() {
    // Another test may have loaded a library in this process; then asking for another file is
    // refused with both paths named. Either way the path asked for is in the message.
    let missing = std::path::Path::new("/nonexistent/dir/libonnxruntime.so.1");
    let e = Runtime::open(RuntimeKind::OnnxRuntime, Some(1), Some(missing)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/dir/libonnxruntime.so.1"),
        "{msg}"
    );
    match e {
        Error::Runtime(r @ RuntimeError::LibraryNotFound { .. })
        | Error::Runtime(r @ RuntimeError::OtherLibraryLoaded { .. }) => {
            assert!(r.is_bad_input())
        }
        other => panic!("unexpected error {other:?}"),
    }
}
