//! The network's workspace: activation and gradient buffers reused across steps.

/// A free list of f32 buffers. After the first step of a fixed workload every request is
/// served from buffers returned by earlier steps, so steady-state training allocates nothing
/// for activations.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Vec<Vec<f32>>,
}

impl BufferPool {
    /// A buffer of `len` elements with unspecified contents (callers overwrite it).
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        // Best fit: the smallest free buffer that is large enough, else the largest one grown.
        let mut best: Option<usize> = None;
        for (i, b) in self.free.iter().enumerate() {
            if b.capacity() >= len && best.is_none_or(|j| b.capacity() < self.free[j].capacity()) {
                best = Some(i);
            }
        }
        let mut v = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        };
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0.0);
        }
        v
    }

    /// Returns a buffer to the pool.
    pub fn give(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.free.push(v);
        }
    }
}
