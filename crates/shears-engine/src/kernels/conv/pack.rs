//! Conv weights in the kernels' layouts, packed from and unpacked to OIHW.

use super::ConvGeom;

/// Convolution weights in the kernels' layout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedConv {
    /// `[groups][kh * kw][c_in / groups][c_out / groups]`.
    pub(crate) w: Vec<f32>,
    /// `[groups][kh][kw (reversed)][c_out / groups][c_in / groups]` (for backward data, whose
    /// kernel taps run right to left over the source).
    pub(crate) wt: Vec<f32>,
    /// `[groups][c_out / groups][kh * kw][c_in / groups]`: the transpose of `w` per group (for
    /// im2col backward data, so that its product reads contiguous rows).
    pub(crate) wc: Vec<f32>,
}

/// Packs an OIHW weight into the kernels' layout.
pub fn pack_weight(g: &ConvGeom, oihw: &[f32]) -> PackedConv {
    assert_eq!(
        oihw.len(),
        g.weight_len(),
        "conv weight length checked by the network"
    );
    let (cig, cog, kk) = (g.cig(), g.cog(), g.kk());
    let mut w = vec![0.0; oihw.len()];
    let mut wt = vec![0.0; oihw.len()];
    let mut wc = vec![0.0; oihw.len()];
    for gi in 0..g.groups {
        for k in 0..kk {
            let (y, x) = (k / g.kw, k % g.kw);
            for ci in 0..cig {
                for co in 0..cog {
                    let v = oihw[g.oihw(gi * cog + co, ci, y, x)];
                    w[g.packed(gi, k, ci, co)] = v;
                    let kr = y * g.kw + (g.kw - 1 - x);
                    wt[((gi * kk + kr) * cog + co) * cig + ci] = v;
                    wc[((gi * cog + co) * kk + k) * cig + ci] = v;
                }
            }
        }
    }
    PackedConv { w, wt, wc }
}

/// Converts a weight (or weight gradient) in the packed layout back to OIHW.
pub fn unpack_weight(g: &ConvGeom, packed: &[f32], oihw: &mut [f32]) {
    assert_eq!(packed.len(), g.weight_len(), "packed conv weight length");
    assert_eq!(oihw.len(), g.weight_len(), "oihw conv weight length");
    let (cig, cog, kk) = (g.cig(), g.cog(), g.kk());
    for gi in 0..g.groups {
        for k in 0..kk {
            let (y, x) = (k / g.kw, k % g.kw);
            for ci in 0..cig {
                for co in 0..cog {
                    oihw[g.oihw(gi * cog + co, ci, y, x)] = packed[g.packed(gi, k, ci, co)];
                }
            }
        }
    }
}
