//! Optimizers with PyTorch's update rules and serialisable state keyed by parameter name.
//!
//! [`crate::Network::step`] calls [`Optimizer::begin_step`] once, then [`Optimizer::update`]
//! for every trainable, unfrozen parameter that has a gradient. Batch-norm running statistics
//! are buffers and are never handed to an optimizer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// A first-order optimizer.
pub trait Optimizer {
    /// Called once per step, before the parameter updates.
    fn begin_step(&mut self) {}

    /// Updates `param` in place from `grad` (same length), using the state kept under `name`.
    fn update(&mut self, name: &str, param: &mut [f32], grad: &[f32]) -> Result<()>;

    /// The learning rate.
    fn lr(&self) -> f32;

    /// Sets the learning rate (for schedules).
    fn set_lr(&mut self, lr: f32);
}

fn check_lr(lr: f32) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(EngineError::Config(format!(
            "learning rate {lr} must be finite and non-negative"
        )))
    }
}

/// Stochastic gradient descent, PyTorch's `torch.optim.SGD` (dampening 0 by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor; default 0 (plain SGD).
    pub momentum: f32,
    /// Dampening of the momentum; default 0.
    pub dampening: f32,
    /// Nesterov momentum (needs momentum > 0 and dampening 0); default false.
    pub nesterov: bool,
    /// L2 penalty added to the gradient (`grad + wd * param`); default 0.
    pub weight_decay: f32,
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        SgdConfig {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// Sets the momentum factor.
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    /// Enables Nesterov momentum.
    pub fn with_nesterov(mut self) -> Self {
        self.nesterov = true;
        self
    }

    /// Sets the L2 weight decay.
    pub fn with_weight_decay(mut self, wd: f32) -> Self {
        self.weight_decay = wd;
        self
    }
}

/// SGD state: the momentum buffer of each parameter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SgdState {
    /// Momentum buffers by parameter name.
    pub momentum_buffers: BTreeMap<String, Vec<f32>>,
}

/// SGD with momentum, Nesterov and weight decay.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    state: SgdState,
}

impl Sgd {
    /// Validates `config` and builds the optimizer with empty state.
    pub fn new(config: SgdConfig) -> Result<Self> {
        check_lr(config.lr)?;
        if !(config.momentum >= 0.0 && config.momentum.is_finite()) {
            return Err(EngineError::Config(format!(
                "momentum {} must be non-negative",
                config.momentum
            )));
        }
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(EngineError::Config(
                "nesterov momentum requires momentum > 0 and dampening 0".into(),
            ));
        }
        if !(config.weight_decay >= 0.0 && config.weight_decay.is_finite()) {
            return Err(EngineError::Config(format!(
                "weight decay {} must be non-negative",
                config.weight_decay
            )));
        }
        Ok(Sgd {
            config,
            state: SgdState::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The state (for checkpoints).
    pub fn state(&self) -> &SgdState {
        &self.state
    }

    /// Replaces the state (resuming from a checkpoint).
    pub fn load_state(&mut self, state: SgdState) {
        self.state = state;
    }
}

impl Optimizer for Sgd {
    fn update(&mut self, name: &str, param: &mut [f32], grad: &[f32]) -> Result<()> {
        let c = &self.config;
        if grad.len() != param.len() {
            return Err(EngineError::OptimizerState {
                name: name.into(),
                expected: param.len(),
                found: grad.len(),
            });
        }
        let wd = c.weight_decay;
        if c.momentum == 0.0 {
            for (p, g) in param.iter_mut().zip(grad) {
                let d = if wd != 0.0 { *g + wd * *p } else { *g };
                *p -= c.lr * d;
            }
            return Ok(());
        }
        let first = !self.state.momentum_buffers.contains_key(name);
        let buf = self
            .state
            .momentum_buffers
            .entry(name.to_string())
            .or_insert_with(|| vec![0.0; param.len()]);
        if buf.len() != param.len() {
            return Err(EngineError::OptimizerState {
                name: name.into(),
                expected: param.len(),
                found: buf.len(),
            });
        }
        for ((p, g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
            let d = if wd != 0.0 { *g + wd * *p } else { *g };
            *b = if first {
                d
            } else {
                c.momentum * *b + (1.0 - c.dampening) * d
            };
            let step = if c.nesterov { d + c.momentum * *b } else { *b };
            *p -= c.lr * step;
        }
        Ok(())
    }

    fn lr(&self) -> f32 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }
}

/// Adam / AdamW, PyTorch's `torch.optim.Adam` and `torch.optim.AdamW`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate; default 1e-3.
    pub lr: f32,
    /// Decay of the first moment; default 0.9.
    pub beta1: f32,
    /// Decay of the second moment; default 0.999.
    pub beta2: f32,
    /// Added to the denominator; default 1e-8.
    pub eps: f32,
    /// Weight decay; default 0.
    pub weight_decay: f32,
    /// AdamW: decay the parameters directly (`p *= 1 - lr * wd`) instead of adding an L2
    /// term to the gradient; default false.
    pub decoupled_weight_decay: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
        }
    }
}

impl AdamConfig {
    /// Adam with learning rate `lr` and PyTorch's other defaults.
    pub fn new(lr: f32) -> Self {
        AdamConfig {
            lr,
            ..Self::default()
        }
    }

    /// AdamW with learning rate `lr` and weight decay `wd`.
    pub fn adamw(lr: f32, wd: f32) -> Self {
        AdamConfig {
            lr,
            weight_decay: wd,
            decoupled_weight_decay: true,
            ..Self::default()
        }
    }

    /// Sets the betas.
    pub fn with_betas(mut self, beta1: f32, beta2: f32) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// Sets eps.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets an L2 weight decay (added to the gradient).
    pub fn with_weight_decay(mut self, wd: f32) -> Self {
        self.weight_decay = wd;
        self
    }
}

/// Adam state of one parameter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdamParamState {
    /// Steps taken for this parameter.
    pub step: u64,
    /// First moment.
    pub exp_avg: Vec<f32>,
    /// Second moment.
    pub exp_avg_sq: Vec<f32>,
}

/// Adam state by parameter name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdamState {
    /// Per-parameter state.
    pub params: BTreeMap<String, AdamParamState>,
}

/// Adam and AdamW.
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    state: AdamState,
}

impl Adam {
    /// Validates `config` and builds the optimizer with empty state.
    pub fn new(config: AdamConfig) -> Result<Self> {
        check_lr(config.lr)?;
        for (what, b) in [("beta1", config.beta1), ("beta2", config.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(EngineError::Config(format!("{what} {b} must be in [0, 1)")));
            }
        }
        if !(config.eps > 0.0 && config.eps.is_finite()) {
            return Err(EngineError::Config(format!(
                "eps {} must be positive",
                config.eps
            )));
        }
        if !(config.weight_decay >= 0.0 && config.weight_decay.is_finite()) {
            return Err(EngineError::Config(format!(
                "weight decay {} must be non-negative",
                config.weight_decay
            )));
        }
        Ok(Adam {
            config,
            state: AdamState::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The state (for checkpoints).
    pub fn state(&self) -> &AdamState {
        &self.state
    }

    /// Replaces the state (resuming from a checkpoint).
    pub fn load_state(&mut self, state: AdamState) {
        self.state = state;
    }
}

impl Optimizer for Adam {
    fn update(&mut self, name: &str, param: &mut [f32], grad: &[f32]) -> Result<()> {
        let c = &self.config;
        if grad.len() != param.len() {
            return Err(EngineError::OptimizerState {
                name: name.into(),
                expected: param.len(),
                found: grad.len(),
            });
        }
        let st = self
            .state
            .params
            .entry(name.to_string())
            .or_insert_with(|| AdamParamState {
                step: 0,
                exp_avg: vec![0.0; param.len()],
                exp_avg_sq: vec![0.0; param.len()],
            });
        if st.exp_avg.len() != param.len() || st.exp_avg_sq.len() != param.len() {
            return Err(EngineError::OptimizerState {
                name: name.into(),
                expected: param.len(),
                found: st.exp_avg.len(),
            });
        }
        st.step += 1;
        let bc1 = 1.0 - c.beta1.powi(st.step as i32);
        let bc2 = 1.0 - c.beta2.powi(st.step as i32);
        let step_size = c.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (((p, g), m), v) in param
            .iter_mut()
            .zip(grad)
            .zip(st.exp_avg.iter_mut())
            .zip(st.exp_avg_sq.iter_mut())
        {
            let mut g = *g;
            if c.weight_decay != 0.0 {
                if c.decoupled_weight_decay {
                    *p *= 1.0 - c.lr * c.weight_decay;
                } else {
                    g += c.weight_decay * *p;
                }
            }
            *m += (1.0 - c.beta1) * (g - *m);
            *v = *v * c.beta2 + (1.0 - c.beta2) * g * g;
            let denom = v.sqrt() / bc2_sqrt + c.eps;
            *p -= step_size * *m / denom;
        }
        Ok(())
    }

    fn lr(&self) -> f32 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }
}
