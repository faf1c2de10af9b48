//! CASM's closed-form variant: the next layer refit by least squares on the sampled
//! feature maps (normal equations, Cholesky in f64).

use shears_engine::{Mode, Network};
use shears_ir::{Graph, Op, ParamKind, Tensor, Weights};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;

use super::{CasmConfig, CasmLayer, Chain, Skip};

/// The closed-form variant: refit `chain.next`'s weight and bias.
#[allow(clippy::too_many_arguments)]
pub(super) fn least_squares(
    small: &mut Network,
    pg: &Graph,
    chain: &Chain,
    xs: &[Tensor],
    ys: &[Tensor],
    cfg: &CasmConfig,
    rng: &mut ChaCha8Rng,
    cur_w: &mut Weights,
    rep: &mut CasmLayer,
) -> Result<(), Skip> {
    let next = chain.next;
    let sg = small.graph().clone();
    let snext = sg
        .find(&pg.node(next).name)
        .expect("the small model holds next");
    let sin = sg.node(snext).inputs[0];
    let node = pg.node(next).clone();
    let wname = node.param_name(ParamKind::Weight);
    let bname = node.param_name(ParamKind::Bias);
    let has_bias = small.params().get(&bname).is_some();
    // Activations at the next layer's input and its output, from the small model.
    let mut feats = Vec::with_capacity(xs.len());
    for x in xs {
        let (_, cap) = small.forward_capture(x, Mode::Eval, &[sin, snext])?;
        feats.push((cap[&sin].clone(), cap[&snext].clone()));
    }
    let init = mse_of(feats.iter().map(|f| &f.1), ys);
    rep.initial_mse = init;
    rep.final_mse = init;
    if init <= 1e-12 * mean_square(ys).max(f64::MIN_POSITIVE) {
        return Ok(());
    }
    let w = cur_w.get(&wname).expect("next has a weight").clone();
    let (rows_x, rows_y, dim, nout) = match &node.op {
        Op::Linear(l) => {
            let (mut rx, mut ry) = (Vec::new(), Vec::new());
            for ((a, _), y) in feats.iter().zip(ys) {
                let n = a.shape()[0];
                for i in 0..n {
                    rx.push(a.data()[i * l.in_features..(i + 1) * l.in_features].to_vec());
                    ry.push(y.data()[i * l.out_features..(i + 1) * l.out_features].to_vec());
                }
            }
            (rx, ry, l.in_features, l.out_features)
        }
        Op::Conv2d(c) if c.groups == 1 => {
            let total: usize = ys
                .iter()
                .map(|y| y.shape()[0] * y.shape()[2] * y.shape()[3])
                .sum();
            let keep = cfg.ls_max_rows.min(total).max(1);
            // A seeded subset of output positions, every one with the same chance.
            let p = keep as f64 / total as f64;
            let (mut rx, mut ry) = (Vec::new(), Vec::new());
            for ((a, _), y) in feats.iter().zip(ys) {
                let (n, ci, h, wd) = (a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]);
                let (co, oh, ow) = (y.shape()[1], y.shape()[2], y.shape()[3]);
                for i in 0..n {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            if p < 1.0 && (rng.next_u64() as f64 / u64::MAX as f64) >= p {
                                continue;
                            }
                            let mut r = Vec::with_capacity(ci * c.kernel[0] * c.kernel[1]);
                            for ch in 0..ci {
                                for ky in 0..c.kernel[0] {
                                    for kx in 0..c.kernel[1] {
                                        let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize
                                            - c.padding[0] as isize;
                                        let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                            - c.padding[1] as isize;
                                        let v = if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < h
                                            && (ix as usize) < wd
                                        {
                                            a.data()[((i * ci + ch) * h + iy as usize) * wd
                                                + ix as usize]
                                        } else {
                                            0.0
                                        };
                                        r.push(v);
                                    }
                                }
                            }
                            rx.push(r);
                            ry.push(
                                (0..co)
                                    .map(|o| y.data()[((i * co + o) * oh + oy) * ow + ox])
                                    .collect(),
                            );
                        }
                    }
                }
            }
            (rx, ry, ci_k(&w), c.out_channels)
        }
        _ => return Err(Skip::Why(format!("{} is a grouped convolution", node.name))),
    };
    let d = dim + usize::from(has_bias);
    let mut a = vec![0.0f64; d * d];
    let mut b = vec![0.0f64; d * nout];
    let mut row = vec![0.0f64; d];
    for (rx, ry) in rows_x.iter().zip(&rows_y) {
        for (k, v) in rx.iter().enumerate() {
            row[k] = *v as f64;
        }
        if has_bias {
            row[dim] = 1.0;
        }
        for i in 0..d {
            let ri = row[i];
            if ri == 0.0 {
                continue;
            }
            for j in i..d {
                a[i * d + j] += ri * row[j];
            }
            for (o, yv) in ry.iter().enumerate() {
                b[i * nout + o] += ri * *yv as f64;
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            a[i * d + j] = a[j * d + i];
        }
    }
    let mean_diag = (0..d).map(|i| a[i * d + i]).sum::<f64>() / d as f64;
    let lambda = cfg.ridge * mean_diag.max(1e-12);
    for i in 0..d {
        a[i * d + i] += lambda;
    }
    let sol = cholesky_solve(&mut a, &mut b, d, nout)
        .ok_or_else(|| Skip::Why("normal equations are not positive definite".into()))?;
    let mut nw = w.clone();
    for o in 0..nout {
        for k in 0..dim {
            nw.data_mut()[o * dim + k] = sol[k * nout + o] as f32;
        }
    }
    let mut upd = Weights::new();
    upd.insert(wname.clone(), nw);
    if has_bias {
        let bias: Vec<f32> = (0..nout).map(|o| sol[dim * nout + o] as f32).collect();
        upd.insert(bname.clone(), Tensor::new(vec![nout], bias)?);
    }
    let before = small.weights();
    small.set_weights(&upd)?;
    // Measured at the next layer's output, the target of the refit.
    let after = mse_of(
        xs.iter()
            .map(|x| {
                small
                    .forward_capture(x, Mode::Eval, &[snext])
                    .map(|(_, c)| c[&snext].clone())
            })
            .collect::<Result<Vec<_>, _>>()?
            .iter(),
        ys,
    );
    if after < init {
        rep.final_mse = after;
        for (name, t) in upd.iter() {
            cur_w.insert(name.clone(), t.clone());
        }
    } else {
        small.set_weights(&before)?;
    }
    Ok(())
}

/// Mean square of the values of `ys`.
pub(super) fn mean_square(ys: &[Tensor]) -> f64 {
    ys.iter()
        .flat_map(|y| y.data().iter())
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        / ys.iter().map(|y| y.numel()).sum::<usize>().max(1) as f64
}

fn ci_k(w: &Tensor) -> usize {
    w.shape()[1..].iter().product()
}

fn mse_of<'a>(pred: impl Iterator<Item = &'a Tensor>, ys: &[Tensor]) -> f64 {
    let (mut s, mut n) = (0.0f64, 0usize);
    for (p, y) in pred.zip(ys) {
        for (a, b) in p.data().iter().zip(y.data()) {
            let d = *a as f64 - *b as f64;
            s += d * d;
        }
        n += y.numel();
    }
    s / n.max(1) as f64
}

/// Solves `A X = B` for a symmetric positive definite `d x d` matrix `A` and `d x m` right-hand
/// sides, in place (Cholesky). Returns `X`, or `None` if `A` is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], d: usize, m: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return None;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    // Forward: L Z = B.
    for i in 0..d {
        for c in 0..m {
            let mut s = b[i * m + c];
            for k in 0..i {
                s -= a[i * d + k] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * d + i];
        }
    }
    // Backward: L^T X = Z.
    for i in (0..d).rev() {
        for c in 0..m {
            let mut s = b[i * m + c];
            for k in i + 1..d {
                s -= a[k * d + i] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * d + i];
        }
    }
    Some(b.to_vec())
}
