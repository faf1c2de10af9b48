//! Per-op and per-step timing.

use super::Network;

/// Time spent per op type and direction, collected when profiling is on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// `(label, seconds, calls)` per label such as `"forward conv2d"`, in first-seen order.
    pub entries: Vec<(String, f64, usize)>,
}

impl Profile {
    pub(super) fn add(&mut self, label: String, secs: f64) {
        match self.entries.iter_mut().find(|e| e.0 == label) {
            Some(e) => {
                e.1 += secs;
                e.2 += 1;
            }
            None => self.entries.push((label, secs, 1)),
        }
    }
}

impl Network {
    /// Turns per-op timing on (resetting it) or off.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Profile::default);
        self.profile_steps = false;
    }

    /// Turns per-step timing on (resetting it) or off: like [`Network::set_profiling`], but
    /// every forward step is its own entry, labelled with its type and its first node's name.
    pub fn set_profiling_per_step(&mut self, on: bool) {
        self.profile = on.then(Profile::default);
        self.profile_steps = on;
    }

    /// The timings collected since profiling was turned on.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }
}
