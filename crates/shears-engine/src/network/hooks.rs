//! Gradient and step hooks, and the optimizer step that runs them.

use crate::error::{EngineError, Result};
use crate::optim::Optimizer;
use crate::params::ParamStore;

use super::{Gradients, Network};

/// Identifies a registered hook, for [`Network::remove_hook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HookId(u64);

/// A hook over the whole parameter and gradient set, run by [`Network::step`].
pub trait StepHook: Send {
    /// Runs after backward and before the optimizer; may change gradients and parameters.
    fn before_step(&mut self, params: &mut ParamStore, grads: &mut Gradients) {
        let _ = (params, grads);
    }

    /// Runs right after the optimizer has updated the network's parameters, before any
    /// `after_step`: lets a hook update parameters it owns outside the graph (e.g. a filter
    /// skeleton multiplied into a kernel) with the same optimizer, learning rate and settings,
    /// under names of its own (they must not collide with the network's parameter names).
    fn update_own(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let _ = opt;
        Ok(())
    }

    /// Runs after the optimizer has updated the parameters (e.g. to re-apply masks).
    fn after_step(&mut self, params: &mut ParamStore) {
        let _ = params;
    }
}

/// The signature of a per-parameter gradient hook: `(name, grad, param)`.
pub type GradHookFn = dyn FnMut(&str, &mut [f32], &mut [f32]) + Send;

pub(super) enum Hook {
    Grad(Box<GradHookFn>),
    Step(Box<dyn StepHook>),
}

impl Network {
    /// Registers a per-parameter hook `f(name, grad, param)`, run by [`Network::step`] for
    /// every trainable parameter with a gradient, before the optimizer. It may change both
    /// the gradient and the parameter.
    pub fn add_grad_hook(
        &mut self,
        f: impl FnMut(&str, &mut [f32], &mut [f32]) + Send + 'static,
    ) -> HookId {
        self.push_hook(Hook::Grad(Box::new(f)))
    }

    /// Registers a hook over the whole parameter and gradient set.
    pub fn add_step_hook(&mut self, hook: impl StepHook + 'static) -> HookId {
        self.push_hook(Hook::Step(Box::new(hook)))
    }

    /// Removes a hook; returns whether it was registered.
    pub fn remove_hook(&mut self, id: HookId) -> bool {
        let before = self.hooks.len();
        self.hooks.retain(|(h, _)| *h != id);
        self.hooks.len() != before
    }

    fn push_hook(&mut self, hook: Hook) -> HookId {
        let id = HookId(self.next_hook);
        self.next_hook += 1;
        self.hooks.push((id, hook));
        id
    }

    /// Runs the hooks (in registration order), then `opt` on every trainable, unfrozen
    /// parameter that has a gradient in `grads`, then the hooks' `update_own` (parameters
    /// they keep outside the graph), then their `after_step`. BN running statistics are never
    /// touched.
    pub fn step(&mut self, opt: &mut dyn Optimizer, grads: &mut Gradients) -> Result<()> {
        for (name, g) in grads.params.iter() {
            let i = self
                .params
                .index_of(name)
                .ok_or_else(|| EngineError::UnknownParam(name.clone()))?;
            let p = &self.params.slots()[i].tensor;
            if p.shape() != g.shape() {
                return Err(EngineError::ShapeMismatch {
                    what: format!("gradient of {name}"),
                    expected: p.shape().to_vec(),
                    found: g.shape().to_vec(),
                });
            }
        }
        for (_, hook) in &mut self.hooks {
            match hook {
                Hook::Grad(f) => {
                    for (name, g) in grads.params.iter_mut() {
                        if !self.params.is_trainable(name) {
                            continue;
                        }
                        let i = self.params.index_of(name).expect("checked above");
                        f(name, g.data_mut(), self.params.slot_mut(i).data_mut());
                    }
                }
                Hook::Step(h) => h.before_step(&mut self.params, grads),
            }
        }
        opt.begin_step();
        for (name, g) in grads.params.iter() {
            if !self.params.is_trainable(name) {
                continue;
            }
            let i = self
                .params
                .index_of(name)
                .ok_or_else(|| EngineError::UnknownParam(name.clone()))?;
            if g.shape() != self.params.slots()[i].tensor.shape() {
                return Err(EngineError::ShapeMismatch {
                    what: format!("gradient of {name}"),
                    expected: self.params.slots()[i].tensor.shape().to_vec(),
                    found: g.shape().to_vec(),
                });
            }
            opt.update(name, self.params.slot_mut(i).data_mut(), g.data())?;
        }
        for (_, hook) in &mut self.hooks {
            if let Hook::Step(h) = hook {
                h.update_own(opt)?;
            }
        }
        for (_, hook) in &mut self.hooks {
            if let Hook::Step(h) = hook {
                h.after_step(&mut self.params);
            }
        }
        Ok(())
    }
}
