//! The layout of a stride-1 correlation over a zero-padded copy of its source: rows for the
//! shifted products, channel-major planes for the transposed ones.

use crate::kernels::transpose::{planes_to_rows, rows_to_planes};

use super::epilogue::{residual_row, BlockEnd, Epilogue};
use super::ConvGeom;

/// How a stride-1 correlation `D[h, w] += sum_k S[h + a_k, w + b_k] * M_k` is laid out over a
/// zero-padded copy `P` of the source, computed over `hd` rows of the padded width `wp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ShiftPlan {
    pub(super) hs: usize,
    pub(super) ws: usize,
    pub(super) hd: usize,
    pub(super) wd: usize,
    /// Padding of the source inside `P` (top, left).
    pub(super) pt: usize,
    pub(super) pl: usize,
    /// Row length of `P` and of the output over the padded width.
    pub(super) wp: usize,
    /// Pixels in `P`, slack included, so every shifted view stays in bounds.
    pub(super) plen: usize,
    /// Flat pixel offset of each kernel offset's view.
    pub(super) offs: Vec<usize>,
    /// The source can be used as `P` directly (no padding needed).
    pub(super) direct_src: bool,
    /// The output over the padded width is the output itself (`wp == wd`).
    pub(super) direct_dst: bool,
}

impl ShiftPlan {
    pub(super) fn new(
        hs: usize,
        ws: usize,
        hd: usize,
        wd: usize,
        a: &[isize],
        b: &[isize],
    ) -> Self {
        let min_a = *a.iter().min().expect("kernel has at least one offset");
        let max_a = *a.iter().max().expect("kernel has at least one offset");
        let min_b = *b.iter().min().expect("kernel has at least one offset");
        let max_b = *b.iter().max().expect("kernel has at least one offset");
        let pt = (-min_a).max(0) as usize;
        let pl = (-min_b).max(0) as usize;
        let wp = (ws + pl).max((wd as isize + max_b + pl as isize).max(0) as usize);
        let hp = (hs + pt).max((hd as isize + max_a + pt as isize).max(0) as usize);
        let offs: Vec<usize> = a
            .iter()
            .zip(b)
            .map(|(&ai, &bi)| ((ai + pt as isize) as usize) * wp + (bi + pl as isize) as usize)
            .collect();
        let max_off = *offs.iter().max().expect("kernel has at least one offset");
        let plen = (hp * wp).max(hd * wp + max_off);
        let direct_src = pt == 0 && pl == 0 && wp == ws && plen <= hs * ws;
        ShiftPlan {
            hs,
            ws,
            hd,
            wd,
            pt,
            pl,
            wp,
            plen,
            offs,
            direct_src,
            direct_dst: wp == wd,
        }
    }

    /// Plan of the forward pass (and backward weight) of a stride-1 conv.
    pub(super) fn forward(g: &ConvGeom) -> Self {
        let (a, b) = offsets(
            g,
            |k| (k / g.kw) as isize * g.dil[0] as isize - g.pad[0] as isize,
            |k| (k % g.kw) as isize * g.dil[1] as isize - g.pad[1] as isize,
        );
        ShiftPlan::new(g.h, g.w, g.oh, g.ow, &a, &b)
    }

    /// Plan of backward data of a stride-1 conv (source `dY`, destination `dX`).
    pub(super) fn backward_data(g: &ConvGeom) -> Self {
        let (a, b) = offsets(
            g,
            |k| g.pad[0] as isize - (k / g.kw) as isize * g.dil[0] as isize,
            |k| g.pad[1] as isize - (k % g.kw) as isize * g.dil[1] as isize,
        );
        ShiftPlan::new(g.oh, g.ow, g.h, g.w, &a, &b)
    }

    /// Rows of the output over the padded width.
    pub(super) fn m(&self) -> usize {
        self.hd * self.wp
    }

    /// Copies `src` (`hs x ws x c`) into the zero-padded buffer `p`.
    pub(super) fn fill(&self, src: &[f32], c: usize, p: &mut [f32]) {
        let p = &mut p[..self.plen * c];
        let row = self.ws * c;
        // Zero only what the copies leave: the top rows, each row's margins, the bottom slack.
        let mut z = 0;
        for y in 0..self.hs {
            let d = ((y + self.pt) * self.wp + self.pl) * c;
            p[z..d].fill(0.0);
            p[d..d + row].copy_from_slice(&src[y * row..(y + 1) * row]);
            z = d + row;
        }
        p[z..].fill(0.0);
    }

    /// Copies `src` (`hs x ws x c`, channels last) into `p` as `c` zero-padded planes of
    /// `plen` pixels each (channel-major), for the transposed products.
    pub(super) fn fill_channel_major(&self, src: &[f32], c: usize, p: &mut [f32]) {
        let p = &mut p[..self.plen * c];
        // One memset is cheaper than zeroing each row's margins apart.
        p.fill(0.0);
        for y in 0..self.hs {
            let row = &src[y * self.ws * c..(y + 1) * self.ws * c];
            let off = (y + self.pt) * self.wp + self.pl;
            rows_to_planes(row, c, self.ws, p, off, self.plen);
        }
    }

    /// Fills this plan's channel-major padded planes `p` from another plan's channel-major
    /// result `d` (its [`Self::m`] pixels per channel over its padded width), adding `bias`
    /// and applying ReLU on the way: the hand-over between two chained transposed convs.
    pub(super) fn fill_from_planes(
        &self,
        d: &[f32],
        from: &ShiftPlan,
        bias: &[f32],
        p: &mut [f32],
    ) {
        let c = bias.len();
        let m = from.m();
        assert_eq!((from.hd, from.wd), (self.hs, self.ws), "chained maps agree");
        let p = &mut p[..self.plen * c];
        // One memset is cheaper than zeroing each row's margins apart.
        p.fill(0.0);
        for ((plane, src), &b) in p
            .chunks_exact_mut(self.plen)
            .zip(d.chunks_exact(m))
            .zip(bias)
        {
            for y in 0..self.hs {
                let o = (y + self.pt) * self.wp + self.pl;
                let s = &src[y * from.wp..y * from.wp + self.ws];
                for (o, v) in plane[o..o + self.ws].iter_mut().zip(s) {
                    *o = (v + b).max(0.0);
                }
            }
        }
    }

    /// Stores the valid columns of the channel-major result `d` (`c` rows of [`Self::m`]
    /// pixels over the padded width) into `dst` (`hd x wd x c`, channels last), adding `bias`
    /// and applying ReLU.
    pub(super) fn store_channel_major(
        &self,
        d: &[f32],
        c: usize,
        dst: &mut [f32],
        ep: Epilogue<'_>,
    ) {
        assert!(!ep.accumulate, "channel-major store overwrites");
        let row = self.wd * c;
        for y in 0..self.hd {
            planes_to_rows(
                d,
                y * self.wp,
                self.m(),
                c,
                self.wd,
                &mut dst[y * row..(y + 1) * row],
                ep.bias,
                ep.residual.map(|r| &r[y * row..(y + 1) * row]),
                ep.relu,
            );
        }
    }

    /// Writes the channel-major result `d` (`c` rows of [`Self::m`] pixels over the padded
    /// width) as this plan's zero-padded planes `dst` (`c` planes of `plen`), each valid pixel
    /// summed as `end` says (its residual planes from pixel `(0, 0)` on, rows `wp` apart): the
    /// hand-over between two chained residual blocks. Needs a same-size plan (`hd x wd` is
    /// `hs x ws`).
    pub(super) fn store_planes(&self, d: &[f32], c: usize, end: BlockEnd<'_>, dst: &mut [f32]) {
        let BlockEnd {
            bias,
            residual: r,
            stride: r_stride,
            relu,
        } = end;
        assert_eq!((self.hd, self.wd), (self.hs, self.ws), "same-size plan");
        let m = self.m();
        let origin = self.pt * self.wp + self.pl;
        for (ci, plane) in dst[..c * self.plen].chunks_exact_mut(self.plen).enumerate() {
            let b = bias.map_or(0.0, |b| b[ci]);
            let src = &d[ci * m..(ci + 1) * m];
            let res = &r[ci * r_stride..];
            plane[..origin].fill(0.0);
            for y in 0..self.hd {
                let o = origin + y * self.wp;
                let (s, rr) = (
                    &src[y * self.wp..][..self.wd],
                    &res[y * self.wp..][..self.wd],
                );
                residual_row(&mut plane[o..o + self.wd], s, rr, b, relu);
                // The margin to the next row's first pixel (or to the end of the plane).
                let next = (o + self.wp).min(self.plen);
                plane[o + self.wd..next].fill(0.0);
            }
            let tail = origin + self.hd * self.wp;
            if tail < self.plen {
                plane[tail..].fill(0.0);
            }
        }
    }

    /// Spreads `src` (`hd x wd x c`) over the padded width with zero extra columns.
    pub(super) fn spread(&self, src: &[f32], c: usize, d: &mut [f32]) {
        let d = &mut d[..self.m() * c];
        let row = self.wd * c;
        for y in 0..self.hd {
            let o = y * self.wp * c;
            d[o..o + row].copy_from_slice(&src[y * row..(y + 1) * row]);
            d[o + row..o + self.wp * c].fill(0.0);
        }
    }

    /// Stores the valid columns of `d` (over the padded width) into `dst`, adding `bias`,
    /// applying ReLU, or accumulating.
    pub(super) fn store(&self, d: &[f32], c: usize, dst: &mut [f32], ep: Epilogue<'_>) {
        let row = self.wd * c;
        for y in 0..self.hd {
            let s = &d[y * self.wp * c..y * self.wp * c + row];
            ep.part(y * row, (y + 1) * row)
                .store(s, &mut dst[y * row..(y + 1) * row], c);
        }
    }
}

fn offsets(
    g: &ConvGeom,
    fa: impl Fn(usize) -> isize,
    fb: impl Fn(usize) -> isize,
) -> (Vec<isize>, Vec<isize>) {
    (
        (0..g.kk()).map(&fa).collect(),
        (0..g.kk()).map(&fb).collect(),
    )
}
