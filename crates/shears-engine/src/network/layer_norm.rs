//! Layer normalisation ([`Op::LayerNorm`]) in the executor: forward, and the gradients of its
//! input, weight and bias. Backward reads the kept input and recomputes each row's statistics.

use shears_ir::{NodeId, Op, ParamKind};

use super::backward::{kept, BwdCtx};
use super::Gradients;
use super::Network;
use crate::kernels::layer_norm::LayerNormGrads;

impl Network {
    /// The channel count, eps and `(gamma, beta)` of layer-norm node `id`.
    fn layer_norm_parts(&self, id: NodeId) -> (usize, f32, &[f32], &[f32]) {
        let Op::LayerNorm(l) = &self.graph.node(id).op else {
            unreachable!("a layer norm node")
        };
        let gamma = self
            .params
            .data(id, ParamKind::Weight)
            .expect("layer norm has a weight");
        let beta = self
            .params
            .data(id, ParamKind::Bias)
            .expect("layer norm has a bias");
        (l.channels, l.eps, gamma, beta)
    }

    /// `y = layer_norm(x)` for layer-norm node `id`.
    pub(super) fn layer_norm_forward(&self, id: NodeId, x: &[f32], y: &mut [f32]) {
        let (c, eps, gamma, beta) = self.layer_norm_parts(id);
        self.backend.layer_norm_forward(x, c, gamma, beta, eps, y);
    }

    /// Gradients of layer-norm node `id` from its output gradient `dy`: its input's where
    /// needed, its weight's and bias's where wanted.
    pub(super) fn layer_norm_backward(
        &mut self,
        id: NodeId,
        bw: &BwdCtx<'_>,
        dy: &[f32],
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) {
        let in0 = self.graph.node(id).inputs[0];
        let [want_w, want_b] = bw.pw[id.0];
        let mut dst = bw.needg[in0.0].then(|| self.grad_dst(grads, bw.n, in0));
        let (c, eps, gamma, _) = self.layer_norm_parts(id);
        let g = LayerNormGrads {
            dx: dst.as_mut().map(|(dx, acc)| (dx.as_mut_slice(), *acc)),
            params: want_w || want_b,
        };
        let pg = self
            .backend
            .layer_norm_backward(kept(bw, in0), c, gamma, eps, dy, g);
        if let Some((dx, _)) = dst {
            grads[in0.0] = Some(dx);
        }
        if let Some((dgamma, dbeta)) = pg {
            if want_w {
                self.insert_grad(out, id, ParamKind::Weight, dgamma);
            }
            if want_b {
                self.insert_grad(out, id, ParamKind::Bias, dbeta);
            }
        }
    }
}
