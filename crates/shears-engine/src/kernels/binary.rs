//! Broadcasting elementwise arithmetic ([`shears_ir::Op::Binary`]) on channels-last operands.
//!
//! An operand is a per-sample `[C, H, W]` (or `[F]`) tensor laid out channels last, either one
//! per image (a computed input) or one for the whole batch (a constant parameter, already
//! converted to channels last by the caller). Along every axis where it has size 1 and the
//! output has more, it is repeated. Gradients of a repeated operand sum over the axes it was
//! repeated along; a batch-shared operand's gradient sums the per-image partials in image
//! order, so the result does not depend on the thread count.

use rayon::prelude::*;
use shears_ir::{Binary, BinaryKind};

/// Where one operand's values sit relative to the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperandGeom {
    /// Channels (the output's or 1).
    pub c: usize,
    /// Rows (the output's or 1).
    pub h: usize,
    /// Columns (the output's or 1).
    pub w: usize,
    /// Whether each image has its own values (a computed input) or all share one (a
    /// constant).
    pub batched: bool,
}

impl OperandGeom {
    /// Per-sample element count.
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Whether the operand has no elements (never, for a valid graph).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operand from its per-sample IR shape (`[C, H, W]` or `[F]`).
    pub fn from_shape(shape: &[usize], batched: bool) -> Self {
        let (c, h, w) = match shape {
            [c, h, w] => (*c, *h, *w),
            [c] => (*c, 1, 1),
            s => panic!("binary operands are [C, H, W] or [F], got {s:?} (validated by the IR)"),
        };
        OperandGeom { c, h, w, batched }
    }

    /// Offset of output pixel `(y, x)`'s row in this operand's per-sample data.
    #[inline]
    fn row(&self, y: usize, x: usize) -> usize {
        let y = if self.h == 1 { 0 } else { y };
        let x = if self.w == 1 { 0 } else { x };
        (y * self.w + x) * self.c
    }
}

/// Geometry of one broadcasting binary op: the output and its two operands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryGeom {
    /// The arithmetic.
    pub kind: BinaryKind,
    /// Output channels.
    pub c: usize,
    /// Output rows.
    pub h: usize,
    /// Output columns.
    pub w: usize,
    /// Left operand.
    pub a: OperandGeom,
    /// Right operand.
    pub b: OperandGeom,
}

impl BinaryGeom {
    /// Per-sample output element count.
    pub fn out_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The geometry of `op` for its computed inputs' and its output's per-sample shapes.
    pub fn new(op: &Binary, inputs: &[&[usize]], out: &[usize]) -> BinaryGeom {
        let (a, b) = op.operand_shapes(inputs);
        let (left_batched, right_batched) = match &op.constant {
            Some(k) => (!k.left, k.left),
            None => (true, true),
        };
        let o = OperandGeom::from_shape(out, true);
        BinaryGeom {
            kind: op.kind,
            c: o.c,
            h: o.h,
            w: o.w,
            a: OperandGeom::from_shape(a, left_batched),
            b: OperandGeom::from_shape(b, right_batched),
        }
    }

    fn image<'x>(&self, op: &OperandGeom, x: &'x [f32], i: usize) -> &'x [f32] {
        if x.is_empty() {
            // An operand the derivative does not read (`Add`, `Sub`).
            x
        } else if op.batched {
            &x[i * op.len()..(i + 1) * op.len()]
        } else {
            x
        }
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
fn apply<F: Fn(f32, f32) -> f32>(
    g: &BinaryGeom,
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    row: usize,
    yr: usize,
    xr: usize,
    f: F,
) {
    let c = g.c;
    let out = &mut y[row * c..(row + 1) * c];
    let (ao, bo) = (g.a.row(yr, xr), g.b.row(yr, xr));
    match (g.a.c == c, g.b.c == c) {
        (true, true) => {
            let (ar, br) = (&a[ao..ao + c], &b[bo..bo + c]);
            for ((o, &p), &q) in out.iter_mut().zip(ar).zip(br) {
                *o = f(p, q);
            }
        }
        (true, false) => {
            let q = b[bo];
            for (o, &p) in out.iter_mut().zip(&a[ao..ao + c]) {
                *o = f(p, q);
            }
        }
        (false, true) => {
            let p = a[ao];
            for (o, &q) in out.iter_mut().zip(&b[bo..bo + c]) {
                *o = f(p, q);
            }
        }
        (false, false) => out.fill(f(a[ao], b[bo])),
    }
}

/// `y = a op b` for `n` images (`y` is `[n, h*w, c]`).
pub fn forward(g: &BinaryGeom, n: usize, a: &[f32], b: &[f32], y: &mut [f32]) {
    let len = g.out_len();
    assert_eq!(y.len(), n * len, "binary output buffer");
    y.par_chunks_mut(len).enumerate().for_each(|(i, yi)| {
        let (ai, bi) = (g.image(&g.a, a, i), g.image(&g.b, b, i));
        for yr in 0..g.h {
            for xr in 0..g.w {
                let row = yr * g.w + xr;
                match g.kind {
                    BinaryKind::Add => apply(g, ai, bi, yi, row, yr, xr, |p, q| p + q),
                    BinaryKind::Sub => apply(g, ai, bi, yi, row, yr, xr, |p, q| p - q),
                    BinaryKind::Mul => apply(g, ai, bi, yi, row, yr, xr, |p, q| p * q),
                    BinaryKind::Div => apply(g, ai, bi, yi, row, yr, xr, |p, q| p / q),
                }
            }
        }
    });
}

/// Which operand a gradient is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The left operand `a`.
    Left,
    /// The right operand `b`.
    Right,
}

/// The gradient of operand `side` from the output gradient `dy`: `dx (+)= sum over the repeated
/// axes of dy * d(a op b)/d(side)`. `dx` is `[n, len]` for a batched operand, `[len]` for a
/// shared one (its per-image partials summed in image order). `a` and `b` are only read
/// where the derivative needs them ([`reads_operands`]); they may be empty otherwise.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &BinaryGeom,
    side: Side,
    n: usize,
    a: &[f32],
    b: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    let op = match side {
        Side::Left => &g.a,
        Side::Right => &g.b,
    };
    let len = op.len();
    let partial = |i: usize| -> Vec<f32> {
        let mut d = vec![0.0f32; len];
        let (ai, bi) = (g.image(&g.a, a, i), g.image(&g.b, b, i));
        let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
        for yr in 0..g.h {
            for xr in 0..g.w {
                let (ao, bo, xo) = (g.a.row(yr, xr), g.b.row(yr, xr), op.row(yr, xr));
                let dr = &dyi[(yr * g.w + xr) * g.c..][..g.c];
                for (ch, &dv) in dr.iter().enumerate() {
                    let (ac, bc) = (
                        if g.a.c == 1 { 0 } else { ch },
                        if g.b.c == 1 { 0 } else { ch },
                    );
                    let xc = if op.c == 1 { 0 } else { ch };
                    let v = match (g.kind, side) {
                        (BinaryKind::Add, _) | (BinaryKind::Sub, Side::Left) => dv,
                        (BinaryKind::Sub, Side::Right) => -dv,
                        (BinaryKind::Mul, Side::Left) => dv * bi[bo + bc],
                        (BinaryKind::Mul, Side::Right) => dv * ai[ao + ac],
                        (BinaryKind::Div, Side::Left) => dv / bi[bo + bc],
                        (BinaryKind::Div, Side::Right) => {
                            let q = bi[bo + bc];
                            -dv * ai[ao + ac] / (q * q)
                        }
                    };
                    d[xo + xc] += v;
                }
            }
        }
        d
    };
    if op.batched {
        assert_eq!(dx.len(), n * len, "batched operand gradient buffer");
        dx.par_chunks_mut(len).enumerate().for_each(|(i, di)| {
            let p = partial(i);
            if accumulate {
                di.iter_mut().zip(&p).for_each(|(o, v)| *o += v);
            } else {
                di.copy_from_slice(&p);
            }
        });
    } else {
        assert_eq!(dx.len(), len, "shared operand gradient buffer");
        let parts: Vec<Vec<f32>> = (0..n).into_par_iter().map(partial).collect();
        if !accumulate {
            dx.fill(0.0);
        }
        for p in &parts {
            dx.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
    }
}

/// The `(left, right)` operands of `op` from its computed inputs `xs` and its constant `k`
/// (channels last), if it has one.
pub fn operands<'x>(op: &Binary, xs: &[&'x [f32]], k: Option<&'x [f32]>) -> (&'x [f32], &'x [f32]) {
    match (&op.constant, k) {
        (Some(c), Some(k)) if c.left => (k, xs[0]),
        (Some(_), Some(k)) => (xs[0], k),
        (None, _) => (xs[0], xs[1]),
        (Some(_), None) => panic!("a binary op with a constant operand is given its weight"),
    }
}

/// Whether the gradients of `kind` read the operands' values (`Mul`, `Div`).
pub fn reads_operands(kind: BinaryKind) -> bool {
    matches!(kind, BinaryKind::Mul | BinaryKind::Div)
}

/// A per-sample `[C, H, W]` tensor (PyTorch layout) as channels last `[H, W, C]`; `[C, 1, 1]`
/// and `[F]` are returned as they are.
pub fn to_channels_last(shape: &[usize], chw: &[f32]) -> Vec<f32> {
    let (c, s) = (shape[0], shape[1..].iter().product::<usize>());
    if s == 1 || c == 1 {
        return chw.to_vec();
    }
    let mut out = vec![0.0; chw.len()];
    for ch in 0..c {
        for p in 0..s {
            out[p * c + ch] = chw[ch * s + p];
        }
    }
    out
}

/// The inverse of [`to_channels_last`].
pub fn to_channels_first(shape: &[usize], hwc: &[f32]) -> Vec<f32> {
    let (c, s) = (shape[0], shape[1..].iter().product::<usize>());
    if s == 1 || c == 1 {
        return hwc.to_vec();
    }
    let mut out = vec![0.0; hwc.len()];
    for ch in 0..c {
        for p in 0..s {
            out[ch * s + p] = hwc[p * c + ch];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u64 * 7919 + seed * 104729) % 997) as f32 / 500.0) - 0.9)
            .collect()
    }

    /// f64 reference on channels-last data.
    fn reference(g: &BinaryGeom, n: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
        let mut y = Vec::new();
        for i in 0..n {
            for yr in 0..g.h {
                for xr in 0..g.w {
                    for ch in 0..g.c {
                        let at = |op: &OperandGeom, v: &[f32]| -> f64 {
                            let base = if op.batched { i * op.len() } else { 0 };
                            let cc = if op.c == 1 { 0 } else { ch };
                            f64::from(v[base + op.row(yr, xr) + cc])
                        };
                        y.push(g.kind.apply(at(&g.a, a), at(&g.b, b)));
                    }
                }
            }
        }
        y
    }

    fn geoms() -> Vec<BinaryGeom> {
        let full = |batched| OperandGeom {
            c: 5,
            h: 3,
            w: 4,
            batched,
        };
        let per_c = |batched| OperandGeom {
            c: 5,
            h: 1,
            w: 1,
            batched,
        };
        let scalar = |batched| OperandGeom {
            c: 1,
            h: 1,
            w: 1,
            batched,
        };
        let plane = |batched| OperandGeom {
            c: 1,
            h: 3,
            w: 4,
            batched,
        };
        let mut out = Vec::new();
        for kind in [
            BinaryKind::Add,
            BinaryKind::Sub,
            BinaryKind::Mul,
            BinaryKind::Div,
        ] {
            for (a, b) in [
                (full(true), per_c(true)),
                (per_c(true), full(true)),
                (full(true), full(true)),
                (full(true), scalar(false)),
                (scalar(false), full(true)),
                (full(true), per_c(false)),
                (plane(true), per_c(true)),
                (full(true), full(false)),
            ] {
                out.push(BinaryGeom {
                    kind,
                    c: 5,
                    h: 3,
                    w: 4,
                    a,
                    b,
                });
            }
        }
        out
    }

    fn data(op: &OperandGeom, n: usize, seed: u64, positive: bool) -> Vec<f32> {
        let len = op.len() * if op.batched { n } else { 1 };
        let v = vals(len, seed);
        if positive {
            v.iter().map(|x| x.abs() + 0.5).collect()
        } else {
            v
        }
    }

    #[test]
    fn forward_matches_reference() {
        let n = 2;
        for g in geoms() {
            let a = data(&g.a, n, 1, false);
            let b = data(&g.b, n, 2, true);
            let mut y = vec![0.0; n * g.out_len()];
            forward(&g, n, &a, &b, &mut y);
            let r = reference(&g, n, &a, &b);
            for (k, (&u, &v)) in y.iter().zip(&r).enumerate() {
                assert!((f64::from(u) - v).abs() < 1e-6, "{g:?} at {k}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let n = 2;
        for g in geoms() {
            let a = data(&g.a, n, 3, false);
            let b = data(&g.b, n, 4, true);
            let dy = vals(n * g.out_len(), 5);
            let loss = |a: &[f32], b: &[f32]| -> f64 {
                reference(&g, n, a, b)
                    .iter()
                    .zip(&dy)
                    .map(|(y, &d)| y * f64::from(d))
                    .sum()
            };
            for side in [Side::Left, Side::Right] {
                let (op, x) = match side {
                    Side::Left => (&g.a, &a),
                    Side::Right => (&g.b, &b),
                };
                let mut dx = vec![7.0; x.len()];
                backward(&g, side, n, &a, &b, &dy, &mut dx, false);
                let mut acc = vec![1.0; x.len()];
                backward(&g, side, n, &a, &b, &dy, &mut acc, true);
                for k in 0..x.len() {
                    let h = 1e-2f32;
                    let (mut xp, mut xm) = (x.clone(), x.clone());
                    xp[k] += h;
                    xm[k] -= h;
                    let (lp, lm) = match side {
                        Side::Left => (loss(&xp, &b), loss(&xm, &b)),
                        Side::Right => (loss(&a, &xp), loss(&a, &xm)),
                    };
                    let fd = (lp - lm) / (2.0 * f64::from(h));
                    let tol = 2e-3 * (1.0 + fd.abs());
                    assert!(
                        (f64::from(dx[k]) - fd).abs() < tol,
                        "{g:?} {side:?} {op:?} at {k}: {} vs {fd}",
                        dx[k]
                    );
                    assert!((acc[k] - dx[k] - 1.0).abs() < 1e-5, "accumulate adds");
                }
            }
        }
    }

    #[test]
    fn layout_round_trip() {
        let shape = [3, 2, 2];
        let chw = vals(12, 9);
        let hwc = to_channels_last(&shape, &chw);
        assert_eq!(hwc[1], chw[4], "pixel 0, channel 1");
        assert_eq!(to_channels_first(&shape, &hwc), chw);
    }
}
