//! Latency tables in shears' engine: every tabled layer of a model is timed once, then read
//! from the cache; the latency allocator's widths meet its target on the tables.

use std::cell::Cell;

use shears::prune::{self, AllocConfig, Criterion, DepGraph, Reduction, ScoreContext};
use shears::runtime::table::{candidate_widths, LayerShape};
use shears::runtime::{latency_strategy, tables_for, Budget, Runtime, RuntimeKind};
use shears::zoo::{build, init_weights, Arch};

fn tiny_budget() -> Budget {
    Budget {
        seconds: 0.002,
        warmup: 1,
        max_passes: Some(3),
    }
}

#[test]
fn tables_are_timed_once_then_read_from_the_cache() {
    let g = build(Arch::Conv4, &Arch::Conv4.default_config()).unwrap();
    let rt = Runtime::open(RuntimeKind::Shears, Some(1), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let timed = Cell::new(0usize);
    let count = |_: &LayerShape| timed.set(timed.get() + 1);
    let t = tables_for(&rt, &g, 2, &tiny_budget(), Some(dir.path()), &count).unwrap();
    let shapes: std::collections::BTreeSet<LayerShape> =
        g.ids().filter_map(|id| LayerShape::of(&g, id)).collect();
    assert_eq!(timed.get(), shapes.len());
    assert_eq!(t.layers.len(), shapes.len());
    for l in &t.layers {
        assert_eq!(l.by_in.widths, candidate_widths(l.shape.in_channels));
        assert_eq!(l.by_out.widths, candidate_widths(l.shape.out_channels));
        assert!(l.full_ms > 0.0 && l.by_out.ms.iter().all(|&x| x > 0.0));
    }
    assert_eq!(t.key.threads, 1);
    assert_eq!(t.key.batch, 2);
    assert!(dir.path().join(t.key.file_name()).is_file());
    timed.set(0);
    let again = tables_for(&rt, &g, 2, &tiny_budget(), Some(dir.path()), &count).unwrap();
    assert_eq!(timed.get(), 0, "everything came from the cache");
    // The cache is JSON: times come back to within float printing, shapes and widths exactly.
    assert_eq!(again.key, t.key);
    assert_eq!(again.layers.len(), t.layers.len());
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
    for (a, b) in again.layers.iter().zip(&t.layers) {
        assert_eq!(a.shape, b.shape);
        assert!(close(a.full_ms, b.full_ms));
        for (ca, cb) in [(&a.by_in, &b.by_in), (&a.by_out, &b.by_out)] {
            assert_eq!(ca.widths, cb.widths);
            assert!(ca.ms.iter().zip(&cb.ms).all(|(&x, &y)| close(x, y)));
        }
    }
}

#[test]
fn latency_strategy_meets_its_target_on_the_tables() {
    let arch = Arch::Conv4;
    let g = build(arch, &arch.default_config()).unwrap();
    let w = init_weights(&g, Some(arch), 0);
    let rt = Runtime::open(RuntimeKind::Shears, Some(1), None).unwrap();
    let tables = tables_for(&rt, &g, 2, &tiny_budget(), None, &|_| {}).unwrap();
    let ctx = ScoreContext::new(&g, &w);
    let dg = DepGraph::build(&g).unwrap();
    let l1 = Criterion::L1.build(Reduction::Mean, 0);
    let (strategy, alloc) = latency_strategy(&ctx, &dg, l1.as_ref(), &tables, 0.5, &[]).unwrap();
    assert!(alloc.predicted_fraction() <= 0.5, "{alloc:?}");
    // The strategy prunes each group to exactly the chosen width.
    let plan = prune::plan_with(&ctx, &dg, l1.as_ref(), &AllocConfig::new(strategy)).unwrap();
    let eligible: Vec<_> = dg.prunable().filter(|g| g.size > 1).collect();
    for (grp, &kept) in eligible.iter().zip(&alloc.kept) {
        let removed = plan
            .groups
            .iter()
            .find(|p| p.group_id == grp.id)
            .map_or(0, |p| p.removed.len());
        assert_eq!(grp.size - removed, kept, "group {}", grp.id);
    }
}
