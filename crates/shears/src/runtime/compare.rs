//! Time-budgeted latency: one model ([`measure`]) or two side by side in alternating warm
//! blocks ([`compare`]).
//!
//! The block method is [`crate::report::compare_latency`]'s: one untimed pass of a model (its
//! weights back in cache after the other ran), a block of timed passes, then the other model,
//! and again. What ends the measurement is a time budget, not an iteration count: each model
//! gets about [`Budget::seconds`] of timed passes per batch size (and at least
//! [`Budget::MIN_PASSES`]), so a large model at a large batch costs seconds, not minutes.

use std::time::Instant;

use shears_ir::{Graph, Tensor};

use super::Prepared;
use crate::report::{latency_of, random_inputs, Latency, LATENCY_BLOCK};
use crate::Error;

/// How long to time each model at each batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// Seconds of timed passes per model and batch size (default 3).
    pub seconds: f64,
    /// Untimed warm-up passes per model before timing (default 2).
    pub warmup: usize,
    /// At most this many timed passes per model (`None`: only the budget limits).
    pub max_passes: Option<usize>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            seconds: 3.0,
            warmup: 2,
            max_passes: None,
        }
    }
}

impl Budget {
    /// Timed passes every model gets, even past the budget, so that a median exists.
    pub const MIN_PASSES: usize = 3;

    /// The default budget with `seconds` per model and batch size.
    pub fn seconds(seconds: f64) -> Budget {
        Budget {
            seconds,
            ..Budget::default()
        }
    }

    fn check(&self) -> Result<(), Error> {
        if !(self.seconds.is_finite() && self.seconds > 0.0) {
            return Err(Error::invalid(format!(
                "latency budget {} s: give a positive number of seconds",
                self.seconds
            )));
        }
        if self.max_passes == Some(0) {
            return Err(Error::invalid(
                "latency: at most 0 passes leaves nothing to time",
            ));
        }
        Ok(())
    }

    /// Timed passes per block for a model whose pass takes `pass_ms`: a tenth of the budget,
    /// between 1 and [`LATENCY_BLOCK`].
    fn block(&self, pass_ms: f64) -> usize {
        let k = (self.seconds * 1e3 / 10.0 / pass_ms.max(1e-6)).floor();
        (k as usize).clamp(1, LATENCY_BLOCK)
    }

    fn done(&self, ts: &[f64]) -> bool {
        let spent: f64 = ts.iter().sum::<f64>() / 1e3;
        if self.max_passes.is_some_and(|m| ts.len() >= m) {
            return true;
        }
        ts.len() >= Self::MIN_PASSES && spent >= self.seconds
    }
}

fn timed(m: &mut Prepared, x: &Tensor) -> Result<f64, Error> {
    let t0 = Instant::now();
    m.run(x)?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// Times `models` on the same input in alternating warm blocks until each has spent its
/// budget; returns each model's timed passes in milliseconds.
fn blocks(
    models: &mut [&mut Prepared],
    x: &Tensor,
    budget: &Budget,
) -> Result<Vec<Vec<f64>>, Error> {
    budget.check()?;
    let mut ks = Vec::with_capacity(models.len());
    for m in models.iter_mut() {
        let mut last = 0.0;
        for _ in 0..budget.warmup.max(1) {
            last = timed(m, x)?;
        }
        ks.push(budget.block(last));
    }
    let mut ts: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    while !ts.iter().all(|t| budget.done(t)) {
        for ((m, t), &k) in models.iter_mut().zip(&mut ts).zip(&ks) {
            if budget.done(t) {
                continue;
            }
            m.run(x)?;
            let k = budget.max_passes.map_or(k, |mx| k.min(mx - t.len()));
            for _ in 0..k {
                t.push(timed(m, x)?);
            }
        }
    }
    Ok(ts)
}

/// Times one prepared model of `graph` at `batch` on seeded random inputs, within `budget`.
pub fn measure(
    m: &mut Prepared,
    graph: &Graph,
    batch: usize,
    budget: &Budget,
) -> Result<Latency, Error> {
    if batch == 0 {
        return Err(Error::invalid("latency needs batch >= 1"));
    }
    let x = random_inputs(graph, batch, 0);
    let mut ts = blocks(&mut [m], &x, budget)?;
    Ok(latency_of(batch, ts.remove(0)))
}

/// Times two prepared models with the same input shape (`graph`'s: a model before and after
/// pruning) at `batch` in alternating warm blocks, each within `budget`, so a change in
/// machine load affects both alike and their ratio stays meaningful. Returns `(a, b)`.
pub fn compare(
    a: &mut Prepared,
    b: &mut Prepared,
    graph: &Graph,
    batch: usize,
    budget: &Budget,
) -> Result<(Latency, Latency), Error> {
    if batch == 0 {
        return Err(Error::invalid("latency needs batch >= 1"));
    }
    let x = random_inputs(graph, batch, 0);
    let mut ts = blocks(&mut [a, b], &x, budget)?;
    let tb = ts.pop().expect("two models");
    let ta = ts.pop().expect("two models");
    Ok((latency_of(batch, ta), latency_of(batch, tb)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_a_tenth_of_the_budget_within_bounds() {
        let b = Budget::seconds(1.0);
        assert_eq!(b.block(50.0), 2);
        assert_eq!(b.block(0.001), LATENCY_BLOCK);
        assert_eq!(b.block(5000.0), 1);
    }

    #[test]
    fn done_needs_the_budget_and_the_minimum() {
        let b = Budget::seconds(0.1);
        assert!(!b.done(&[200.0]));
        assert!(b.done(&[40.0, 40.0, 40.0]));
        assert!(!b.done(&[10.0, 10.0, 10.0]));
        let capped = Budget {
            max_passes: Some(2),
            ..b
        };
        assert!(capped.done(&[1.0, 1.0]));
        assert!(Budget::seconds(0.0).check().is_err());
    }
}
