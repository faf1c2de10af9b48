//! Weight caches: conv weights packed into the kernels' layout, and conv + BN folded for
//! inference; both rebuilt only when a tensor they derive from changes.

use shears_ir::{NodeId, Op, ParamKind};

use crate::kernels::conv::PackedConv;

use super::{Geo, Network};

pub(super) struct PackCache {
    pub(super) version: u64,
    pub(super) packed: PackedConv,
}

pub(super) struct FusedCache {
    pub(super) versions: [u64; 6],
    pub(super) packed: PackedConv,
    pub(super) bias: Vec<f32>,
}

impl Network {
    pub(super) fn ensure_pack(&mut self, id: NodeId) {
        let ver = self.params.version(id, ParamKind::Weight);
        if matches!(&self.packs[id.0], Some(p) if p.version == ver) {
            return;
        }
        let Geo::Conv(g) = &self.geo[id.0] else {
            panic!("ensure_pack on a non-conv node")
        };
        let w = self
            .params
            .data(id, ParamKind::Weight)
            .expect("conv nodes have a weight");
        self.packs[id.0] = Some(PackCache {
            version: ver,
            packed: self.backend.pack_conv(g, w),
        });
    }

    pub(super) fn ensure_fused(&mut self, conv: NodeId, bn: NodeId) {
        let p = &self.params;
        let versions = [
            p.version(conv, ParamKind::Weight),
            p.version(conv, ParamKind::Bias),
            p.version(bn, ParamKind::Weight),
            p.version(bn, ParamKind::Bias),
            p.version(bn, ParamKind::RunningMean),
            p.version(bn, ParamKind::RunningVar),
        ];
        if matches!(&self.fused[conv.0], Some(f) if f.versions == versions) {
            return;
        }
        let Geo::Conv(g) = &self.geo[conv.0] else {
            panic!("ensure_fused on a non-conv node")
        };
        let Op::BatchNorm2d(b) = &self.graph.node(bn).op else {
            panic!("ensure_fused on a non-BN node")
        };
        let w = p.data(conv, ParamKind::Weight).expect("conv has a weight");
        let cb = p.data(conv, ParamKind::Bias);
        let gamma = p.data(bn, ParamKind::Weight).expect("bn has a weight");
        let beta = p.data(bn, ParamKind::Bias).expect("bn has a bias");
        let rm = p
            .data(bn, ParamKind::RunningMean)
            .expect("bn has a running mean");
        let rv = p
            .data(bn, ParamKind::RunningVar)
            .expect("bn has a running var");
        let per = w.len() / g.c_out;
        let mut wf = vec![0.0f32; w.len()];
        let mut bias = vec![0.0f32; g.c_out];
        for o in 0..g.c_out {
            let s = gamma[o] as f64 / (rv[o] as f64 + b.eps as f64).sqrt();
            for (d, v) in wf[o * per..(o + 1) * per]
                .iter_mut()
                .zip(&w[o * per..(o + 1) * per])
            {
                *d = (*v as f64 * s) as f32;
            }
            let b0 = cb.map_or(0.0, |cb| cb[o] as f64);
            bias[o] = ((b0 - rm[o] as f64) * s + beta[o] as f64) as f32;
        }
        let packed = self.backend.pack_conv(g, &wf);
        self.fused[conv.0] = Some(FusedCache {
            versions,
            packed,
            bias,
        });
    }
}
