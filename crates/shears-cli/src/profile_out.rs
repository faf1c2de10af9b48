//! `--profile` of `shears run` and `shears eval`: the engine's time per forward step (op type,
//! node, shapes, algorithm, ms, share), as a table or as typed JSON.

use serde::Serialize;
use shears_engine::{Network, StepTime};

use crate::output::Table;

/// The per-step profile of the passes run since profiling was turned on.
#[derive(Debug, Serialize)]
pub struct StepProfile {
    /// Seconds summed over every step of every pass.
    pub total_seconds: f64,
    /// Per step and batch size, in execution order.
    pub steps: Vec<StepRow>,
    /// Per op type and algorithm, largest share first.
    pub by_op: Vec<OpRow>,
}

/// One step of [`StepProfile`].
#[derive(Debug, Serialize)]
pub struct StepRow {
    /// What ran, on which shapes, how long in total.
    #[serde(flatten)]
    pub step: StepTime,
    /// Mean milliseconds per run.
    pub ms: f64,
    /// Fraction of `total_seconds`.
    pub share: f64,
    /// Billions of multiply-accumulates per second (0 for steps without MACs).
    pub gmacs_per_s: f64,
}

/// One op type (and conv algorithm) of [`StepProfile`].
#[derive(Debug, Serialize)]
pub struct OpRow {
    /// The step label (`"conv2d+bn+relu"`) with the conv algorithm, if any.
    pub op: String,
    /// Steps of this kind.
    pub steps: usize,
    /// Seconds summed.
    pub seconds: f64,
    /// Fraction of the total.
    pub share: f64,
}

/// Turns per-step profiling on in `net` (resetting it).
pub fn start(net: &mut Network) {
    net.set_profiling_per_step(true);
}

/// The profile collected in `net` since [`start`], or `None` if profiling is off.
pub fn collect(net: &Network) -> Option<StepProfile> {
    let p = net.profile()?;
    let total = p.steps_seconds();
    let share = |s: f64| if total > 0.0 { s / total } else { 0.0 };
    let steps: Vec<StepRow> = p
        .steps
        .iter()
        .map(|s| StepRow {
            ms: s.ms_per_call(),
            share: share(s.seconds),
            gmacs_per_s: if s.seconds > 0.0 {
                s.macs as f64 * s.calls as f64 / s.seconds / 1e9
            } else {
                0.0
            },
            step: s.clone(),
        })
        .collect();
    let mut by_op: Vec<OpRow> = Vec::new();
    for s in &steps {
        let op = op_name(&s.step);
        match by_op.iter_mut().find(|r| r.op == op) {
            Some(r) => {
                r.steps += 1;
                r.seconds += s.step.seconds;
            }
            None => by_op.push(OpRow {
                op,
                steps: 1,
                seconds: s.step.seconds,
                share: 0.0,
            }),
        }
    }
    for r in &mut by_op {
        r.share = share(r.seconds);
    }
    by_op.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Some(StepProfile {
        total_seconds: total,
        steps,
        by_op,
    })
}

/// `op [algo]`.
fn op_name(s: &StepTime) -> String {
    match s.algo {
        Some(a) => format!("{} [{a:?}]", s.op),
        None => s.op.to_string(),
    }
}

fn shape(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// The profile as two tables: per step in execution order, then per op type.
pub fn render(p: &StepProfile) -> String {
    let mut t = Table::new(&[
        "#", "op", "node", "input", "output", "ms", "share", "GMAC/s",
    ]);
    for (i, r) in p.steps.iter().enumerate() {
        let s = &r.step;
        t.row(vec![
            i.to_string(),
            op_name(s),
            s.node.clone(),
            s.inputs
                .iter()
                .map(|x| shape(x))
                .collect::<Vec<_>>()
                .join(" "),
            shape(&s.output),
            format!("{:.3}", r.ms),
            format!("{:.1}%", 100.0 * r.share),
            if s.macs > 0 {
                format!("{:.1}", r.gmacs_per_s)
            } else {
                "-".into()
            },
        ]);
    }
    let mut o = Table::new(&["op", "steps", "ms", "share"]);
    for r in &p.by_op {
        o.row(vec![
            r.op.clone(),
            r.steps.to_string(),
            format!("{:.3}", r.seconds * 1e3),
            format!("{:.1}%", 100.0 * r.share),
        ]);
    }
    format!(
        "profile: {:.3} s over all forward steps\n\n{}\n{}",
        p.total_seconds,
        t.render(),
        o.render()
    )
}
