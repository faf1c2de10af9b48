//! Latency tables: each conv and linear layer shape of a model timed as a one-layer model in
//! a runtime, over candidate widths, and cached on disk.
//!
//! A layer's latency at input width `i` and output width `o` is estimated from two measured
//! curves, one over the output width at full input width and one over the input width at full
//! output width, as `t_in(i) * t_out(o) / t_full` (separable: each axis scales the kernel's
//! work by its own blocking). The curves are measured at [`candidate_widths`], so the steps a
//! runtime is fast at (MLAS blocks channels by 8 or 16) show in them as measured, not assumed.
//!
//! Tables are cached under a directory ([`default_cache_dir`]: `$XDG_CACHE_HOME/shears`, else
//! `~/.cache/shears`) in one JSON file per [`TableKey`]: runtime and version, CPU model,
//! threads and batch. A layer shape already in the file is not timed again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shears_ir::{Conv2d, Graph, GraphBuilder, Linear, NodeId, Op};

use super::{measure, Budget, Runtime, RuntimeError, RuntimeKind};
use crate::zoo::init_weights;
use crate::Error;

/// The shape of a conv (one group) or linear layer, widths included.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerShape {
    /// Linear (`true`) or conv.
    pub linear: bool,
    /// Input channels (features for a linear layer).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input height and width (`[1, 1]` for a linear layer).
    pub in_hw: [usize; 2],
    /// Kernel size.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    /// Dilation.
    pub dilation: [usize; 2],
    /// Whether the layer adds a bias.
    pub bias: bool,
}

impl LayerShape {
    /// The shape of node `id` if it is a linear layer on a flat input or a conv with one
    /// group; `None` otherwise (depthwise and grouped convs are not tabled).
    pub fn of(graph: &Graph, id: NodeId) -> Option<LayerShape> {
        let input = graph.input_shapes(id).first()?.to_vec();
        match &graph.node(id).op {
            Op::Conv2d(c) if c.groups == 1 && input.len() == 3 => Some(LayerShape {
                linear: false,
                in_channels: c.in_channels,
                out_channels: c.out_channels,
                in_hw: [input[1], input[2]],
                kernel: c.kernel,
                stride: c.stride,
                padding: c.padding,
                dilation: c.dilation,
                bias: c.bias,
            }),
            Op::Linear(l) if input.len() == 1 => Some(LayerShape {
                linear: true,
                in_channels: l.in_features,
                out_channels: l.out_features,
                in_hw: [1, 1],
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0; 4],
                dilation: [1, 1],
                bias: l.bias,
            }),
            _ => None,
        }
    }

    /// A one-layer graph of this shape with `in_w` input and `out_w` output channels.
    pub fn graph(&self, in_w: usize, out_w: usize) -> Result<Graph, Error> {
        let mut b = GraphBuilder::new();
        let op: Op = if self.linear {
            let x = b.input("x", &[in_w])?;
            let l = Linear {
                in_features: in_w,
                out_features: out_w,
                bias: self.bias,
            };
            let y = b.add("layer", l, &[x])?;
            return Ok(b.finish(&[y])?);
        } else {
            let mut c = Conv2d::new(in_w, out_w, 1);
            c.kernel = self.kernel;
            c.stride = self.stride;
            c.padding = self.padding;
            c.dilation = self.dilation;
            c.bias = self.bias;
            c.into()
        };
        let x = b.input("x", &[in_w, self.in_hw[0], self.in_hw[1]])?;
        let y = b.add("layer", op, &[x])?;
        Ok(b.finish(&[y])?)
    }
}

/// Widths a curve is measured at for a layer axis of `n` channels: every multiple of a step
/// (4, or about n/32 rounded to a multiple of 4 for wide layers) from about n/8 up, and `n`.
pub fn candidate_widths(n: usize) -> Vec<usize> {
    let step = (n / 32).div_ceil(4).max(1) * 4;
    let lo = (n / 8).max(1);
    let mut v: Vec<usize> = (1..=n / step)
        .map(|k| k * step)
        .filter(|&w| w >= lo)
        .collect();
    if v.last() != Some(&n) {
        v.push(n);
    }
    if v[0] > lo {
        v.insert(0, lo);
    }
    v
}

/// Measured latency over one width, the other held at full width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Ascending widths.
    pub widths: Vec<usize>,
    /// Median milliseconds at each width.
    pub ms: Vec<f64>,
}

impl Curve {
    /// Milliseconds at width `w`: measured, linearly interpolated between measured widths, or
    /// the nearest end outside them.
    pub fn at(&self, w: usize) -> f64 {
        match self.widths.binary_search(&w) {
            Ok(i) => self.ms[i],
            Err(0) => self.ms[0],
            Err(i) if i == self.widths.len() => self.ms[i - 1],
            Err(i) => {
                let (w0, w1) = (self.widths[i - 1] as f64, self.widths[i] as f64);
                let t = (w as f64 - w0) / (w1 - w0);
                self.ms[i - 1] + t * (self.ms[i] - self.ms[i - 1])
            }
        }
    }
}

/// One layer shape's measured latencies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerTable {
    /// The layer at full width.
    pub shape: LayerShape,
    /// Milliseconds at full width.
    pub full_ms: f64,
    /// Over the input width, output at full width.
    pub by_in: Curve,
    /// Over the output width, input at full width.
    pub by_out: Curve,
}

impl LayerTable {
    /// Estimated milliseconds at input width `in_w` and output width `out_w`.
    pub fn ms(&self, in_w: usize, out_w: usize) -> f64 {
        if self.full_ms <= 0.0 {
            return 0.0;
        }
        self.by_in.at(in_w) * self.by_out.at(out_w) / self.full_ms
    }
}

/// What a table's timings depend on; a cached table is used only for the same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableKey {
    /// The runtime.
    pub runtime: RuntimeKind,
    /// Its version.
    pub version: String,
    /// The CPU model (`model name` in /proc/cpuinfo).
    pub cpu: String,
    /// Worker threads.
    pub threads: usize,
    /// Batch size.
    pub batch: usize,
}

impl TableKey {
    /// The key of `runtime` at `batch` on this machine.
    pub fn of(runtime: &Runtime, batch: usize) -> TableKey {
        TableKey {
            runtime: runtime.kind(),
            version: runtime.version(),
            cpu: cpu_model(),
            threads: runtime.threads(),
            batch,
        }
    }

    /// The cache file name: runtime, version, threads, batch and a hash of the CPU model.
    pub fn file_name(&self) -> String {
        let cpu = self.cpu.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let version: String = self
            .version
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "latency-{}-{version}-{}t-b{}-cpu{cpu:016x}.json",
            self.runtime, self.threads, self.batch
        )
    }
}

/// The CPU model from /proc/cpuinfo, or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `$XDG_CACHE_HOME/shears`, else `$HOME/.cache/shears`, else `.shears-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("shears");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache").join("shears");
    }
    PathBuf::from(".shears-cache")
}

/// The latency tables of one runtime, batch and machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyTables {
    /// What the timings depend on.
    pub key: TableKey,
    /// One table per layer shape, sorted by shape.
    pub layers: Vec<LayerTable>,
}

impl LatencyTables {
    /// No tables yet for `key`.
    pub fn empty(key: TableKey) -> Self {
        LatencyTables {
            key,
            layers: Vec::new(),
        }
    }

    /// The table of `shape`.
    pub fn get(&self, shape: &LayerShape) -> Option<&LayerTable> {
        self.layers
            .binary_search_by(|t| t.shape.cmp(shape))
            .ok()
            .map(|i| &self.layers[i])
    }

    /// Adds (or replaces) a layer's table.
    pub fn insert(&mut self, t: LayerTable) {
        match self.layers.binary_search_by(|x| x.shape.cmp(&t.shape)) {
            Ok(i) => self.layers[i] = t,
            Err(i) => self.layers.insert(i, t),
        }
    }

    /// The cached tables for `key` in `dir`, or empty ones when there is no file. A file that
    /// does not parse or holds another key is an error naming it.
    pub fn load(dir: &Path, key: &TableKey) -> Result<LatencyTables, RuntimeError> {
        let path = dir.join(key.file_name());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LatencyTables::empty(key.clone()))
            }
            Err(e) => return Err(cache_err(&path, e)),
        };
        let t: LatencyTables = serde_json::from_str(&text).map_err(|e| cache_err(&path, e))?;
        if &t.key != key {
            return Err(cache_err(
                &path,
                format!("holds tables for {:?}, not {key:?}", t.key),
            ));
        }
        Ok(t)
    }

    /// Writes the tables to `dir` (created if needed) atomically; returns the file.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, RuntimeError> {
        let path = dir.join(self.key.file_name());
        std::fs::create_dir_all(dir).map_err(|e| cache_err(dir, e))?;
        let text = serde_json::to_string_pretty(self).expect("plain data");
        shears_io::write_atomic(&path, |w| w.write_all(text.as_bytes()))
            .map_err(|e| cache_err(&path, e))?;
        Ok(path)
    }
}

fn cache_err(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Cache {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Times one layer shape in `runtime` at `batch`: its two curves over [`candidate_widths`].
pub fn measure_layer(
    runtime: &Runtime,
    shape: &LayerShape,
    batch: usize,
    budget: &Budget,
) -> Result<LayerTable, Error> {
    let time = |i: usize, o: usize| -> Result<f64, Error> {
        let g = shape.graph(i, o)?;
        let w = init_weights(&g, None, 0);
        let mut m = runtime.prepare(&g, &w)?;
        Ok(measure(&mut m, &g, batch, budget)?.median_ms)
    };
    let (n_in, n_out) = (shape.in_channels, shape.out_channels);
    let full_ms = time(n_in, n_out)?;
    let curve = |widths: Vec<usize>, f: &dyn Fn(usize) -> Result<f64, Error>| {
        let ms = widths
            .iter()
            .map(|&w| f(w))
            .collect::<Result<Vec<f64>, Error>>()?;
        Ok::<Curve, Error>(Curve { widths, ms })
    };
    let by_in = curve(candidate_widths(n_in), &|w| {
        if w == n_in {
            Ok(full_ms)
        } else {
            time(w, n_out)
        }
    })?;
    let by_out = curve(candidate_widths(n_out), &|w| {
        if w == n_out {
            Ok(full_ms)
        } else {
            time(n_in, w)
        }
    })?;
    Ok(LayerTable {
        shape: shape.clone(),
        full_ms,
        by_in,
        by_out,
    })
}

/// The tables of every tabled layer of `graph` in `runtime` at `batch`: read from the cache in
/// `cache` (when given), the missing shapes timed and the file updated. `progress` is told
/// each shape timed.
pub fn tables_for(
    runtime: &Runtime,
    graph: &Graph,
    batch: usize,
    budget: &Budget,
    cache: Option<&Path>,
    progress: &dyn Fn(&LayerShape),
) -> Result<LatencyTables, Error> {
    let key = TableKey::of(runtime, batch);
    let mut tables = match cache {
        Some(dir) => LatencyTables::load(dir, &key)?,
        None => LatencyTables::empty(key),
    };
    let mut shapes: Vec<LayerShape> = graph
        .ids()
        .filter_map(|id| LayerShape::of(graph, id))
        .collect();
    shapes.sort();
    shapes.dedup();
    shapes.retain(|s| tables.get(s).is_none());
    let mut changed = false;
    for s in &shapes {
        progress(s);
        let t = measure_layer(runtime, s, batch, budget)?;
        tables.insert(t);
        changed = true;
    }
    if changed {
        if let Some(dir) = cache {
            tables.save(dir)?;
        }
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_widths_cover_the_range_and_end_at_full() {
        assert_eq!(candidate_widths(16), vec![2, 4, 8, 12, 16]);
        let w = candidate_widths(64);
        assert_eq!(w[0], 8);
        assert_eq!(*w.last().unwrap(), 64);
        assert!(w.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(candidate_widths(1), vec![1]);
        assert_eq!(candidate_widths(10), vec![1, 4, 8, 10]);
        assert!(candidate_widths(512).len() <= 40);
    }

    fn key(threads: usize) -> TableKey {
        TableKey {
            runtime: RuntimeKind::OnnxRuntime,
            version: "1.32.0".into(),
            cpu: "Test CPU @ 1 GHz".into(),
            threads,
            batch: 32,
        }
    }

    fn table(n: usize) -> LayerTable {
        let c = Curve {
            widths: vec![n / 2, n],
            ms: vec![0.5, 1.0],
        };
        LayerTable {
            shape: LayerShape {
                linear: true,
                in_channels: n,
                out_channels: n,
                in_hw: [1, 1],
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0; 4],
                dilation: [1, 1],
                bias: true,
            },
            full_ms: 1.0,
            by_in: c.clone(),
            by_out: c,
        }
    }

    #[test]
    fn cache_round_trips_under_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = LatencyTables::empty(key(2));
        t.insert(table(16));
        t.insert(table(8));
        assert_eq!(t.layers[0].shape.in_channels, 8, "kept sorted");
        let path = t.save(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(key(2).file_name()));
        let back = LatencyTables::load(dir.path(), &key(2)).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.get(&table(16).shape).unwrap().ms(8, 16), 0.5);
        // Another thread count, CPU or version is another file: nothing cached for it.
        let other = LatencyTables::load(dir.path(), &key(4)).unwrap();
        assert!(other.layers.is_empty());
        let mut cpu = key(2);
        cpu.cpu = "Other CPU".into();
        assert_ne!(cpu.file_name(), key(2).file_name());
        let mut ver = key(2);
        ver.version = "1.31.0".into();
        assert_ne!(ver.file_name(), key(2).file_name());
        // A file holding another key, or not parsing, is an error naming it.
        std::fs::copy(&path, dir.path().join(cpu.file_name())).unwrap();
        let e = LatencyTables::load(dir.path(), &cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&cpu.file_name()), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(LatencyTables::load(dir.path(), &key(2)).is_err());
    }

    #[test]
    fn curve_interpolates_and_clamps() {
        let c = Curve {
            widths: vec![4, 8],
            ms: vec![1.0, 3.0],
        };
        assert_eq!(c.at(4), 1.0);
        assert_eq!(c.at(6), 2.0);
        assert_eq!(c.at(2), 1.0);
        assert_eq!(c.at(9), 3.0);
    }
}
