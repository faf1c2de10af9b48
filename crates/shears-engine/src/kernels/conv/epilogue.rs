//! What happens to a result when it is stored: bias, residual sum, ReLU, accumulation.

/// What happens to a result row when it is stored.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
    pub accumulate: bool,
    /// Added after the bias and before the ReLU, laid out like the destination (the end of a
    /// residual block: `f((conv + bias) + residual)`, the order of a separate add).
    pub residual: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    pub(super) const PLAIN: Epilogue<'static> = Epilogue {
        bias: None,
        relu: false,
        accumulate: false,
        residual: None,
    };

    pub(super) fn is_plain(&self) -> bool {
        self.bias.is_none() && !self.relu && !self.accumulate && self.residual.is_none()
    }

    /// The epilogue of the destination's elements `from..to` (the residual sliced to them).
    pub(super) fn part(&self, from: usize, to: usize) -> Epilogue<'a> {
        Epilogue {
            residual: self.residual.map(|r| &r[from..to]),
            ..*self
        }
    }

    /// `dst = f(src)` for rows of `c` channels.
    pub(super) fn store(&self, src: &[f32], dst: &mut [f32], c: usize) {
        if let Some(res) = self.residual {
            assert!(!self.accumulate, "a residual epilogue overwrites");
            let zero = vec![0.0f32; if self.bias.is_none() { c } else { 0 }];
            let bias = match self.bias {
                Some(b) => &b[..c],
                None => &zero[..c],
            };
            for ((dr, sr), rr) in dst
                .chunks_exact_mut(c)
                .zip(src.chunks_exact(c))
                .zip(res.chunks_exact(c))
            {
                let (dr, sr, rr) = (&mut dr[..c], &sr[..c], &rr[..c]);
                if self.relu {
                    (0..c).for_each(|j| dr[j] = ((sr[j] + bias[j]) + rr[j]).max(0.0));
                } else {
                    (0..c).for_each(|j| dr[j] = (sr[j] + bias[j]) + rr[j]);
                }
            }
            return;
        }
        if self.bias.is_none() && !self.relu {
            if self.accumulate {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
            } else {
                dst.copy_from_slice(src);
            }
            return;
        }
        let zero = vec![0.0f32; if self.bias.is_none() { c } else { 0 }];
        // Slicing every row to `c` lets the compiler drop bounds checks and vectorise.
        let bias = match self.bias {
            Some(b) => &b[..c],
            None => &zero[..c],
        };
        for (dr, sr) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
            let (dr, sr) = (&mut dr[..c], &sr[..c]);
            match (self.relu, self.accumulate) {
                (true, false) => (0..c).for_each(|j| dr[j] = (sr[j] + bias[j]).max(0.0)),
                (false, false) => (0..c).for_each(|j| dr[j] = sr[j] + bias[j]),
                (true, true) => (0..c).for_each(|j| dr[j] += (sr[j] + bias[j]).max(0.0)),
                (false, true) => (0..c).for_each(|j| dr[j] += sr[j] + bias[j]),
            }
        }
    }

    /// Applies bias, residual and ReLU in place.
    pub(super) fn in_place(&self, y: &mut [f32], c: usize) {
        assert!(!self.accumulate, "in-place epilogue cannot accumulate");
        if let Some(res) = self.residual {
            let zero = vec![0.0f32; if self.bias.is_none() { c } else { 0 }];
            let bias = match self.bias {
                Some(b) => &b[..c],
                None => &zero[..c],
            };
            for (r, rr) in y.chunks_exact_mut(c).zip(res.chunks_exact(c)) {
                let (r, rr) = (&mut r[..c], &rr[..c]);
                if self.relu {
                    (0..c).for_each(|j| r[j] = ((r[j] + bias[j]) + rr[j]).max(0.0));
                } else {
                    (0..c).for_each(|j| r[j] = (r[j] + bias[j]) + rr[j]);
                }
            }
            return;
        }
        match (self.bias, self.relu) {
            (None, false) => {}
            (None, true) => y.iter_mut().for_each(|v| *v = v.max(0.0)),
            (Some(b), relu) => {
                let b = &b[..c];
                for r in y.chunks_exact_mut(c) {
                    let r = &mut r[..c];
                    if relu {
                        (0..c).for_each(|j| r[j] = (r[j] + b[j]).max(0.0));
                    } else {
                        (0..c).for_each(|j| r[j] += b[j]);
                    }
                }
            }
        }
    }
}

/// How a residual block's result pixel is finished: `f((d + bias[c]) + residual)`, with the
/// residual channel-major (channel `c` at `c * stride`) and `f` ReLU or the identity.
#[derive(Clone, Copy)]
pub(super) struct BlockEnd<'a> {
    pub(super) bias: Option<&'a [f32]>,
    pub(super) residual: &'a [f32],
    pub(super) stride: usize,
    pub(super) relu: bool,
}

/// `out = f((s + b) + r)` element by element, `f` ReLU or the identity (a residual block's end,
/// in the order of a conv's epilogue followed by a separate add).
pub(super) fn residual_row(out: &mut [f32], s: &[f32], r: &[f32], b: f32, relu: bool) {
    if relu {
        for ((o, v), r) in out.iter_mut().zip(s).zip(r) {
            *o = ((v + b) + r).max(0.0);
        }
    } else {
        for ((o, v), r) in out.iter_mut().zip(s).zip(r) {
            *o = (v + b) + r;
        }
    }
}

/// `d[c * d_stride + j] = (d[..] + bias[c]) + r[c * r_stride + j]` for `j < m` over the rows
/// of `d` (the residual sum of a chain, in the order of a conv's epilogue and a separate add).
pub(super) fn add_bias_and(
    d: &mut [f32],
    d_stride: usize,
    m: usize,
    bias: Option<&[f32]>,
    r: &[f32],
    r_stride: usize,
) {
    for (ci, row) in d.chunks_exact_mut(d_stride).enumerate() {
        let row = &mut row[..m];
        let b = bias.map_or(0.0, |b| b[ci]);
        let rr = &r[ci * r_stride..ci * r_stride + m];
        if bias.is_some() {
            row.iter_mut().zip(rr).for_each(|(v, r)| *v = (*v + b) + r);
        } else {
            row.iter_mut().zip(rr).for_each(|(v, r)| *v += r);
        }
    }
}
