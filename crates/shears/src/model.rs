//! A model as users hold it: a graph, its weights and how to preprocess its input.
//!
//! [`load_model`] reads any supported file. A self-describing safetensors file (one shears
//! wrote) and an ONNX file carry their graph; any other file needs the zoo architecture it
//! was trained as (`--arch`), and its tensor names are matched to the graph (a `module.`
//! prefix from `nn.DataParallel` is stripped automatically). Binding is strict: a missing,
//! unexpected or mis-shaped tensor is an error that names it.
//!
//! Preprocessing is data, not architecture: loading never fails for lack of it.
//! [`resolve_preprocess`] takes each of scale, mean and std from the first source that has
//! it: explicit values ([`PreprocessOverride`], the `--scale/--mean/--std` flags), then the
//! file's metadata ([`META_PREPROCESS`]), then the zoo architecture's
//! ([`Arch::preprocessing`], when `--arch` or [`META_ARCH`] names one), then
//! [`default_preprocess`]. [`PreprocessOrigin`] records where each came from, so that a
//! command that feeds data through a guessed default can say so.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use shears_io::{
    bind_weights, export_onnx, Format, LoadOptions, LoadReport, OnnxExportOptions, Remap,
    Strictness,
};
use shears_ir::{Graph, Op, Tensor, Weights};

use crate::zoo::{self, Arch, Preprocess};
use crate::Error;

/// Metadata key holding the zoo architecture name, when known.
pub const META_ARCH: &str = "shears.arch";
/// Metadata key holding the JSON form of the input preprocessing.
pub const META_PREPROCESS: &str = "shears.preprocess";
/// Metadata key listing (comma-separated) the fields of [`META_PREPROCESS`] that were the
/// [default](default_preprocess) when the model was saved, not values anyone chose; absent
/// when none were.
pub const META_PREPROCESS_DEFAULTED: &str = "shears.preprocess.defaulted";
/// Metadata key holding the dataset the model was trained or evaluated on.
pub const META_DATASET: &str = "shears.dataset";

/// The ImageNet channel means (RGB) on `[0, 1]` pixels, as torchvision models expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// The ImageNet channel standard deviations (RGB) on `[0, 1]` pixels.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A graph with bound weights and its input preprocessing.
#[derive(Clone, Debug)]
pub struct Model {
    /// The computation graph.
    pub graph: Graph,
    /// Weights bound to the graph (every parameter present with the right shape).
    pub weights: Weights,
    /// How raw pixels become model input.
    pub preprocess: Preprocess,
    /// Where each field of `preprocess` came from.
    pub preprocess_origin: PreprocessOrigin,
    /// The zoo architecture, when known.
    pub arch: Option<Arch>,
    /// Free-form metadata carried in the file (dataset, history, ...).
    pub metadata: BTreeMap<String, String>,
    /// What happened while binding tensors to the graph.
    pub report: LoadReport,
}

/// Where a preprocessing value came from, highest precedence first.
/// Serialises as its display text (`flags`, `metadata shears.preprocess`, `architecture
/// resnet20`, `default`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreprocessSource {
    /// Given explicitly (`--scale`, `--mean`, `--std`).
    Flags,
    /// The model file's [`META_PREPROCESS`] metadata.
    Metadata,
    /// The zoo architecture's [`Arch::preprocessing`].
    Arch(Arch),
    /// [`default_preprocess`]: nobody said.
    Default,
}

impl serde::Serialize for PreprocessSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for PreprocessSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreprocessSource::Flags => f.write_str("flags"),
            PreprocessSource::Metadata => write!(f, "metadata {META_PREPROCESS}"),
            PreprocessSource::Arch(a) => write!(f, "architecture {a}"),
            PreprocessSource::Default => f.write_str("default"),
        }
    }
}

/// Where each field of a [`Preprocess`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PreprocessOrigin {
    /// Source of [`Preprocess::scale`].
    pub scale: PreprocessSource,
    /// Source of [`Preprocess::mean`].
    pub mean: PreprocessSource,
    /// Source of [`Preprocess::std`].
    pub std: PreprocessSource,
}

impl PreprocessOrigin {
    /// Every field from `source`.
    pub fn all(source: PreprocessSource) -> Self {
        PreprocessOrigin {
            scale: source,
            mean: source,
            std: source,
        }
    }

    /// The fields that are the [default](default_preprocess), by name (`scale`, `mean`,
    /// `std`).
    pub fn defaulted(&self) -> Vec<&'static str> {
        [
            ("scale", self.scale),
            ("mean", self.mean),
            ("std", self.std),
        ]
        .into_iter()
        .filter(|(_, s)| *s == PreprocessSource::Default)
        .map(|(n, _)| n)
        .collect()
    }

    /// Whether any field is the default, i.e. a guess.
    pub fn uses_default(&self) -> bool {
        !self.defaulted().is_empty()
    }
}

/// Preprocessing values given explicitly, each overriding every other source. A mean or std
/// of one value applies to every channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreprocessOverride {
    /// Factor on raw pixels (`--scale`); finite and non-zero.
    pub scale: Option<f32>,
    /// Per-channel means (`--mean`); finite.
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviations (`--std`); finite and non-zero.
    pub std: Option<Vec<f32>>,
}

impl PreprocessOverride {
    /// Whether no value is given.
    pub fn is_empty(&self) -> bool {
        self.scale.is_none() && self.mean.is_none() && self.std.is_none()
    }
}

/// How to load a model file ([`load_model_with`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelLoadOptions {
    /// The zoo architecture: builds the graph of a file that carries none, and supplies
    /// preprocessing below the file's own. Default `None`.
    pub arch: Option<Arch>,
    /// Explicit preprocessing values (highest precedence). Default none.
    pub preprocess: PreprocessOverride,
    /// The per-sample input shape, e.g. `[3, 224, 224]`: required for an ONNX model with
    /// symbolic or unknown dims besides the batch, sets the input size of a zoo
    /// architecture built for a file with no graph, and must match any other file's graph.
    /// Default `None`.
    pub input_shape: Option<Vec<usize>>,
}

impl Model {
    /// A freshly initialised zoo model: `arch` built with `cfg`, weights from
    /// [`zoo::init_weights`] with `seed`, the architecture's preprocessing, no metadata.
    pub fn fresh(arch: Arch, cfg: &zoo::ZooConfig, seed: u64) -> Result<Model, Error> {
        let graph = zoo::build(arch, cfg)?;
        let weights = zoo::init_weights(&graph, Some(arch), seed);
        Ok(Model {
            graph,
            weights,
            preprocess: arch.preprocessing(),
            preprocess_origin: PreprocessOrigin::all(PreprocessSource::Arch(arch)),
            arch: Some(arch),
            metadata: BTreeMap::new(),
            report: LoadReport::default(),
        })
    }

    /// The channel count of the graph's first input when it is an image `[C, H, W]`.
    pub fn input_channels(&self) -> Option<usize> {
        input_channels(&self.graph)
    }

    /// Applies the model's preprocessing in place to raw pixels `x` of shape `[N, C, H, W]`
    /// (`x[c] = (pixel * scale - mean[c]) / std[c]`, as the data loaders do).
    ///
    /// # Errors
    /// [`Error::Invalid`] when `x` is not `[N, C, H, W]` with the model input's channels.
    pub fn preprocess_input(&self, x: &mut Tensor) -> Result<(), Error> {
        let c = match (x.shape(), self.input_channels()) {
            ([_, c, _, _], Some(want)) if *c == want => *c,
            (shape, want) => {
                return Err(Error::invalid(format!(
                    "preprocessing needs raw pixels [N, C, H, W] with the model's {} channels, \
                     got shape {shape:?}",
                    want.map_or("image".to_string(), |c| c.to_string())
                )))
            }
        };
        let plane = x.shape()[2] * x.shape()[3];
        let norm = crate::eval::normalize_for(&self.preprocess, c);
        for (i, v) in x.data_mut().iter_mut().enumerate() {
            *v = norm.apply(*v, (i / plane) % c);
        }
        Ok(())
    }

    /// Applies explicit preprocessing values over the model's own, checking the result
    /// against the input's channel count (see [`resolve_preprocess`]).
    pub fn override_preprocess(&mut self, values: &PreprocessOverride) -> Result<(), Error> {
        let current = (self.preprocess.clone(), self.preprocess_origin);
        let (p, o) = resolve_preprocess(values, Some(&current), self.arch, self.input_channels())?;
        self.preprocess = p;
        self.preprocess_origin = o;
        Ok(())
    }
}

/// The channel count of `graph`'s first input when it is an image `[C, H, W]`.
pub fn input_channels(graph: &Graph) -> Option<usize> {
    let id = *graph.inputs().first()?;
    match &graph.node(id).op {
        Op::Input { shape } if shape.len() == 3 => Some(shape[0]),
        _ => None,
    }
}

/// The preprocessing used when neither flags, the file nor an architecture give one:
/// raw pixels times `1/255`, then for a 3-channel (or unknown) input the ImageNet mean and
/// std ([`IMAGENET_MEAN`], [`IMAGENET_STD`]), which is what torchvision's pretrained CNNs
/// expect; for any other channel count mean 0 and std 1 per channel.
pub fn default_preprocess(channels: Option<usize>) -> Preprocess {
    match channels {
        None | Some(3) => Preprocess {
            scale: 1.0 / 255.0,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        },
        Some(c) => Preprocess {
            scale: 1.0 / 255.0,
            mean: vec![0.0; c],
            std: vec![1.0; c],
        },
    }
}

/// Resolves a model's preprocessing field by field: `values` (explicit) > `stored` (the
/// file's metadata, with the origin it recorded) > `arch`'s > [`default_preprocess`].
///
/// A one-value explicit mean or std is broadcast to `channels`. The result is checked:
/// scale finite and non-zero, means finite, stds finite and non-zero, and (when `channels`
/// is known) mean and std of one value or exactly `channels` values.
///
/// # Errors
/// [`Error::Invalid`] naming the value, where it came from and the channel count.
pub fn resolve_preprocess(
    values: &PreprocessOverride,
    stored: Option<&(Preprocess, PreprocessOrigin)>,
    arch: Option<Arch>,
    channels: Option<usize>,
) -> Result<(Preprocess, PreprocessOrigin), Error> {
    let (base, base_origin) = match (stored, arch) {
        (Some((p, o)), _) => (p.clone(), *o),
        (None, Some(a)) => (
            a.preprocessing(),
            PreprocessOrigin::all(PreprocessSource::Arch(a)),
        ),
        (None, None) => (
            default_preprocess(channels),
            PreprocessOrigin::all(PreprocessSource::Default),
        ),
    };
    let broadcast = |v: &[f32]| match (v, channels) {
        ([x], Some(c)) => vec![*x; c],
        _ => v.to_vec(),
    };
    let pick = |given: Option<f32>, base: f32, origin| match given {
        Some(v) => (v, PreprocessSource::Flags),
        None => (base, origin),
    };
    let (scale, scale_from) = pick(values.scale, base.scale, base_origin.scale);
    let (mean, mean_from) = match &values.mean {
        Some(v) => (broadcast(v), PreprocessSource::Flags),
        None => (base.mean, base_origin.mean),
    };
    let (std, std_from) = match &values.std {
        Some(v) => (broadcast(v), PreprocessSource::Flags),
        None => (base.std, base_origin.std),
    };
    let p = Preprocess { scale, mean, std };
    let origin = PreprocessOrigin {
        scale: scale_from,
        mean: mean_from,
        std: std_from,
    };
    check_preprocess(&p, &origin, channels)?;
    Ok((p, origin))
}

/// Checks a resolved preprocessing (see [`resolve_preprocess`]).
fn check_preprocess(
    p: &Preprocess,
    origin: &PreprocessOrigin,
    channels: Option<usize>,
) -> Result<(), Error> {
    let from = |s: PreprocessSource, flag: &str| match s {
        PreprocessSource::Flags => format!("--{flag}"),
        other => format!("{flag} from the {other}"),
    };
    if !(p.scale.is_finite() && p.scale != 0.0) {
        return Err(Error::invalid(format!(
            "{} {}: the scale must be finite and non-zero",
            from(origin.scale, "scale"),
            p.scale
        )));
    }
    for (name, v, src, nonzero) in [
        ("mean", &p.mean, origin.mean, false),
        ("std", &p.std, origin.std, true),
    ] {
        let shown = v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let shown = shown.join(",");
        if let Some(c) = channels.filter(|&c| v.len() != c && v.len() != 1) {
            return Err(Error::invalid(format!(
                "{} {shown}: {} values, but the model input has {c} channels (give {c} values, \
                 or one for all channels)",
                from(src, name),
                v.len()
            )));
        }
        if v.is_empty() {
            return Err(Error::invalid(format!("{}: no values", from(src, name))));
        }
        if let Some(x) = v.iter().find(|x| !x.is_finite() || (nonzero && **x == 0.0)) {
            let must = if nonzero {
                "finite and non-zero"
            } else {
                "finite"
            };
            return Err(Error::invalid(format!(
                "{} {shown}: value {x} must be {must}",
                from(src, name)
            )));
        }
    }
    Ok(())
}

/// Loads a model file. `arch` is required when the file carries no graph; when both are present
/// the file's graph wins and `arch` only fills in the preprocessing if the file has none.
/// Preprocessing never fails for lack of a source (see [`resolve_preprocess`]).
pub fn load_model(path: &Path, arch: Option<Arch>) -> Result<Model, Error> {
    load_model_with(
        path,
        &ModelLoadOptions {
            arch,
            ..Default::default()
        },
    )
}

/// [`load_model`] with explicit preprocessing values and an input shape.
///
/// # Errors
/// The file's own errors; [`Error::NeedArch`] for a file with no graph and no architecture;
/// [`Error::Invalid`] for invalid preprocessing (naming the value and its source) or an
/// input shape the graph does not have.
pub fn load_model_with(path: &Path, opts: &ModelLoadOptions) -> Result<Model, Error> {
    let io_opts = LoadOptions {
        input_shape: opts.input_shape.clone(),
    };
    let mut loaded = shears_io::load_with(path, &io_opts)?;
    let file_arch = loaded
        .metadata
        .get(META_ARCH)
        .and_then(|s| s.parse::<Arch>().ok());
    let arch = file_arch.or(opts.arch);
    let origin = path.display().to_string();
    let graph = match loaded.graph {
        Some(g) => g,
        None => {
            let arch = arch.ok_or_else(|| Error::NeedArch {
                path: path.to_path_buf(),
            })?;
            let mut cfg = arch.default_config();
            if let Some([c, h, w]) = opts.input_shape.as_deref() {
                cfg.in_channels = *c;
                cfg.input_hw = (*h, *w);
            }
            zoo::build(arch, &cfg)?
        }
    };
    if let Some(want) = &opts.input_shape {
        let id = *graph.inputs().first().expect("a valid graph has an input");
        if graph.shape(id) != want.as_slice() {
            return Err(Error::invalid(format!(
                "{origin}: the model's input shape is {:?}, not the {want:?} given \
                 (--input-shape applies to inputs with symbolic dims)",
                graph.shape(id)
            )));
        }
    }
    let names: Vec<String> = loaded.weights.names().cloned().collect();
    let remap = Remap::auto_for(&graph, &names);
    let (weights, report) =
        bind_weights(&graph, loaded.weights, &remap, Strictness::Strict, &origin)?;
    let defaulted = loaded.metadata.remove(META_PREPROCESS_DEFAULTED);
    let stored = match loaded.metadata.get(META_PREPROCESS) {
        Some(s) => {
            let p: Preprocess = serde_json::from_str(s).map_err(|e| Error::Invalid {
                what: format!("{origin}: metadata {META_PREPROCESS} is not valid: {e}"),
            })?;
            let fields: Vec<&str> = defaulted.as_deref().unwrap_or("").split(',').collect();
            let src = |name| match fields.contains(&name) {
                true => PreprocessSource::Default,
                false => PreprocessSource::Metadata,
            };
            let o = PreprocessOrigin {
                scale: src("scale"),
                mean: src("mean"),
                std: src("std"),
            };
            Some((p, o))
        }
        None => None,
    };
    let (preprocess, preprocess_origin) = resolve_preprocess(
        &opts.preprocess,
        stored.as_ref(),
        arch,
        input_channels(&graph),
    )
    .map_err(|e| Error::invalid(format!("{origin}: {e}")))?;
    Ok(Model {
        graph,
        weights,
        preprocess,
        preprocess_origin,
        arch,
        metadata: loaded.metadata,
        report,
    })
}

/// The metadata a saved model carries besides its graph: the model's own, plus
/// [`META_PREPROCESS`], [`META_PREPROCESS_DEFAULTED`] when a field is a guess, and
/// [`META_ARCH`] when known.
pub fn model_metadata(model: &Model) -> BTreeMap<String, String> {
    let mut meta = model.metadata.clone();
    meta.insert(
        META_PREPROCESS.to_string(),
        serde_json::to_string(&model.preprocess).expect("preprocess serialises: plain data"),
    );
    let defaulted = model.preprocess_origin.defaulted();
    if defaulted.is_empty() {
        meta.remove(META_PREPROCESS_DEFAULTED);
    } else {
        meta.insert(META_PREPROCESS_DEFAULTED.to_string(), defaulted.join(","));
    }
    if let Some(a) = model.arch {
        meta.insert(META_ARCH.to_string(), a.to_string());
    }
    meta
}

/// Saves a model as self-describing safetensors (graph, preprocessing and architecture in the
/// metadata, see [`model_metadata`]), atomically. It reloads with [`load_model`] and no
/// `arch`, with the same preprocessing and origin.
pub fn save_model(path: &Path, model: &Model) -> Result<(), Error> {
    shears_io::save_model(path, &model.graph, &model.weights, &model_metadata(model))?;
    Ok(())
}

/// A weight tensor holding NaN or infinite values (see [`non_finite_weights`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NonFinite {
    /// The tensor name.
    pub tensor: String,
    /// How many of its values are NaN.
    pub nan: usize,
    /// How many are +inf or -inf.
    pub inf: usize,
    /// How many values it has.
    pub numel: usize,
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tensor {:?} has {} NaN and {} infinite of {} values",
            self.tensor, self.nan, self.inf, self.numel
        )
    }
}

/// The tensors of `weights` that hold NaN or infinite values, in name order: the one check
/// commands run on loaded weights (`info` and `eval` warn, `prune` refuses with
/// [`Error::NonFinite`]).
pub fn non_finite_weights(weights: &Weights) -> Vec<NonFinite> {
    weights
        .iter()
        .filter_map(|(name, t)| {
            let nan = t.data().iter().filter(|x| x.is_nan()).count();
            let inf = t.data().iter().filter(|x| x.is_infinite()).count();
            (nan + inf > 0).then(|| NonFinite {
                tensor: name.clone(),
                nan,
                inf,
                numel: t.data().len(),
            })
        })
        .collect()
}

/// [`non_finite_weights`] as an error: `Ok` when every weight of `model` is finite.
///
/// # Errors
/// [`Error::NonFinite`] naming `origin` and every tensor with NaN or infinite values.
pub fn require_finite(model: &Model, origin: &Path) -> Result<(), Error> {
    let tensors = non_finite_weights(&model.weights);
    if tensors.is_empty() {
        return Ok(());
    }
    Err(Error::NonFinite {
        path: origin.to_path_buf(),
        tensors,
    })
}

/// The metadata an ONNX export carries: what a runtime user needs to feed the model
/// ([`META_PREPROCESS`], [`META_PREPROCESS_DEFAULTED`], [`META_ARCH`], [`META_DATASET`]), not
/// the pruning and training records.
pub fn runtime_metadata(model: &Model) -> BTreeMap<String, String> {
    let keep = [
        META_PREPROCESS,
        META_PREPROCESS_DEFAULTED,
        META_ARCH,
        META_DATASET,
    ];
    let mut meta = model_metadata(model);
    meta.retain(|k, _| keep.contains(&k.as_str()));
    meta
}

/// Saves a model in the format its extension names ([`Format::for_output`]): `.safetensors`
/// as [`save_model`] does, `.onnx` through [`export_onnx`] with [`runtime_metadata`] and a
/// symbolic batch. Returns the format written.
///
/// # Errors
/// [`shears_io::IoError::UnknownOutputFormat`] for any other extension (nothing is written),
/// and the writers' own errors (a `path` that is not a regular file, an operator ONNX cannot
/// express).
pub fn save_model_as(path: &Path, model: &Model) -> Result<Format, Error> {
    let format = Format::for_output(path)?;
    match format {
        Format::SafeTensors => save_model(path, model)?,
        Format::Onnx => {
            let opts = OnnxExportOptions::new().with_metadata(runtime_metadata(model));
            export_onnx(path, &model.graph, &model.weights, &opts)?;
        }
        Format::PyTorch => unreachable!("Format::for_output never names PyTorch"),
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(mean: f32) -> (Preprocess, PreprocessOrigin) {
        let p = Preprocess {
            scale: 1.0,
            mean: vec![mean; 3],
            std: vec![2.0; 3],
        };
        (p, PreprocessOrigin::all(PreprocessSource::Metadata))
    }

    #[test]
    fn each_field_comes_from_the_first_source_that_has_it() {
        let none = PreprocessOverride::default();
        let arch = Some(Arch::ResNet20);
        let (p, o) = resolve_preprocess(&none, None, None, Some(3)).unwrap();
        assert_eq!(p, default_preprocess(Some(3)));
        assert_eq!(o, PreprocessOrigin::all(PreprocessSource::Default));
        assert_eq!(p.mean, IMAGENET_MEAN.to_vec());
        let (p, o) = resolve_preprocess(&none, None, arch, Some(3)).unwrap();
        assert_eq!(p, Arch::ResNet20.preprocessing());
        assert_eq!(o.mean, PreprocessSource::Arch(Arch::ResNet20));
        let (p, o) = resolve_preprocess(&none, Some(&stored(0.25)), arch, Some(3)).unwrap();
        assert_eq!((p.mean[0], o.std), (0.25, PreprocessSource::Metadata));
        let flags = PreprocessOverride {
            scale: Some(0.5),
            mean: Some(vec![0.1]),
            std: None,
        };
        let (p, o) = resolve_preprocess(&flags, Some(&stored(0.25)), arch, Some(3)).unwrap();
        assert_eq!((p.scale, p.mean.clone()), (0.5, vec![0.1; 3]));
        assert_eq!((p.std[0], o.std), (2.0, PreprocessSource::Metadata));
        assert_eq!(
            (o.scale, o.mean),
            (PreprocessSource::Flags, PreprocessSource::Flags)
        );
        assert!(!o.uses_default());
        let (_, o) = resolve_preprocess(&flags, None, None, Some(3)).unwrap();
        assert_eq!(o.defaulted(), vec!["std"]);
    }

    #[test]
    fn invalid_values_are_refused_naming_them() {
        let bad = |flags: PreprocessOverride, needle: &str| {
            let e = resolve_preprocess(&flags, None, None, Some(3)).unwrap_err();
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
        };
        let with = |scale, mean, std| PreprocessOverride { scale, mean, std };
        bad(
            with(None, Some(vec![0.1, 0.2]), None),
            "--mean 0.1,0.2: 2 values",
        );
        bad(with(None, None, Some(vec![1.0, 0.0, 1.0])), "--std 1,0,1");
        bad(with(None, None, Some(vec![f32::NAN])), "--std NaN");
        bad(with(Some(f32::INFINITY), None, None), "--scale inf");
        bad(with(Some(0.0), None, None), "--scale 0");
        // A one-channel model's default has one mean; the ImageNet three do not fit it.
        assert_eq!(default_preprocess(Some(1)).mean, vec![0.0]);
        let stored = (
            default_preprocess(Some(3)),
            PreprocessOrigin::all(PreprocessSource::Metadata),
        );
        let e = resolve_preprocess(&PreprocessOverride::default(), Some(&stored), None, Some(1));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("metadata shears.preprocess"));
    }
}
