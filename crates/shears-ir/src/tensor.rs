//! A plain, owned f32 tensor and the named-weights map that travels with a graph.
//!
//! These are data containers: no arithmetic lives here. Layout is PyTorch's (row-major,
//! activations NCHW, conv weights OIHW, linear weights `[out, in]`).

use std::collections::BTreeMap;

use crate::IrError;

/// An owned, row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that `data.len()` equals the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, IrError> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(IrError::TensorSize {
                shape,
                expected: numel,
                found: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f32) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![value; shape.iter().product()],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access to the elements, row-major.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor and returns its elements.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Returns a tensor with the same data and a new shape of the same size.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self, IrError> {
        Tensor::new(shape, self.data)
    }
}

/// Parameters and buffers of a model, keyed by name (`<node name>.<kind>`, e.g.
/// `layer1.0.conv1.weight`). A `BTreeMap` so that iteration order is deterministic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    map: BTreeMap<String, Tensor>,
}

impl Weights {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tensor stored under `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    /// Mutable access to the tensor stored under `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.map.get_mut(name)
    }

    /// Stores `tensor` under `name`, returning what was there before.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.map.insert(name.into(), tensor)
    }

    /// Removes and returns the tensor under `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.map.remove(name)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Iterates over `(name, tensor)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    /// Iterates mutably over `(name, tensor)` in name order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Tensor)> {
        self.map.iter_mut()
    }

    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total number of elements over all tensors.
    pub fn numel(&self) -> usize {
        self.map.values().map(Tensor::numel).sum()
    }
}

impl FromIterator<(String, Tensor)> for Weights {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        Weights {
            map: iter.into_iter().collect(),
        }
    }
}

impl IntoIterator for Weights {
    type Item = (String, Tensor);
    type IntoIter = std::collections::btree_map::IntoIter<String, Tensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.into_iter()
    }
}
