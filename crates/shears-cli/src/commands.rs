//! Subcommand implementations: validate arguments, call the library, render.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::json;
use shears::eval::{evaluate, EvalConfig};
use shears::model::{load_model_with, save_model_as, Model, ModelLoadOptions};
use shears::progress::Verbosity;
use shears::train::{train, CheckpointConfig, TrainConfig};
use shears::zoo::Arch;
use shears_data::{DatasetName, FetchOptions, FileStatus, Split};
use shears_engine::Network;

use crate::args::*;
use crate::output::{print_json, thousands, Table};

/// A user-input error: exit code 2.
#[derive(Debug)]
struct BadInput(String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

pub(crate) fn bad(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

/// Creates an output directory (`flag` names the option), refusing a path that exists and is
/// not a directory (exit 2).
pub(crate) fn create_out_dir(flag: &str, dir: &std::path::Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(bad(format!(
            "{flag} {}: exists and is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| bad(format!("{flag} {}: cannot create it: {e}", dir.display())))
}

/// Refuses an output path before any work is done: one that exists and is not a regular file
/// (a device node, FIFO, symbolic link or directory) or that is one of `inputs` (exit 2).
pub(crate) fn check_out(path: &Path, inputs: &[&Path]) -> Result<()> {
    let opts = inputs
        .iter()
        .fold(shears_io::WriteOptions::new(), |o, i| o.with_input(*i));
    shears_io::check_output(path, &opts)?;
    Ok(())
}

/// [`check_out`] for a model file, which must also have an extension naming a format shears
/// writes (`.safetensors`, `.onnx`; see [`shears::model::save_model_as`]).
pub(crate) fn check_model_out(path: &Path, inputs: &[&Path]) -> Result<()> {
    check_out(path, inputs)?;
    shears_io::Format::for_output(path)?;
    Ok(())
}

/// Exit code of a pruning error: 1 when the model failed to run or to verify, 2 for bad input
/// (plans, budgets, criteria, layer names).
fn prune_exit_code(e: &shears::prune::PruneError) -> u8 {
    use shears::prune::PruneError;
    match e {
        PruneError::Verification { .. } | PruneError::Forward { .. } => 1,
        _ => 2,
    }
}

/// Exit code for an error: 2 for bad input (files, values, shapes), 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(pe) = cause.downcast_ref::<shears::prune::PruneError>() {
            return prune_exit_code(pe);
        }
        if cause.downcast_ref::<BadInput>().is_some()
            || cause.downcast_ref::<shears_io::IoError>().is_some()
            || cause.downcast_ref::<shears_data::DataError>().is_some()
            || cause.downcast_ref::<shears_ir::IrError>().is_some()
        {
            return 2;
        }
        if cause
            .downcast_ref::<shears_engine::EngineError>()
            .is_some_and(|e| e.is_bad_input())
        {
            return 2;
        }
        if let Some(se) = cause.downcast_ref::<shears::Error>() {
            return match se {
                shears::Error::Engine(e) if e.is_bad_input() => 2,
                shears::Error::Engine(_) => 1,
                shears::Error::Runtime(r) if !r.is_bad_input() => 1,
                shears::Error::Prune(pe) => prune_exit_code(pe),
                _ => 2,
            };
        }
    }
    1
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info(a) => info(a),
        Command::Eval(a) => eval(a),
        Command::Train(a) => train_cmd(a),
        Command::Demo(a) => crate::demo_cmd::run(a),
        Command::Data(a) => data(a),
        Command::Bench(a) => bench(a),
        Command::Prune(a) => crate::prune_cmd::run(a),
        Command::Export(a) => crate::export_cmd::run(a),
        Command::Run(a) => crate::run_cmd::run(a),
        Command::Analyze(a) => match a.command {
            AnalyzeCommand::Lsa(a) => crate::analyze_lsa_cmd::run(a),
            AnalyzeCommand::Sbpf(a) => crate::analyze_sbpf_cmd::run(a),
            AnalyzeCommand::Sweep(a) => crate::analyze_sweep_cmd::run(a),
            AnalyzeCommand::Merge(a) => crate::analyze_merge_cmd::run(a),
        },
        Command::Recover(a) => match a.command {
            RecoverCommand::Bn(a) => crate::recover_cmd::run_bn(a),
            RecoverCommand::Casm(a) => crate::recover_cmd::run_casm(a),
            RecoverCommand::Finetune(a) => crate::recover_cmd::run_finetune(a),
        },
    }
}

pub(crate) fn parse_arch(s: &str) -> Result<Arch> {
    s.parse::<Arch>().map_err(|e| bad(e.to_string()))
}

pub(crate) fn parse_dataset(s: &str) -> Result<DatasetName> {
    s.parse::<DatasetName>().map_err(|e| bad(e.to_string()))
}

/// `--data-dir`, then `$SHEARS_DATA`, then `./data`, then `../shared/data`.
pub(crate) fn data_dir(opts: &DataOpts) -> PathBuf {
    if let Some(d) = &opts.data_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("SHEARS_DATA") {
        return PathBuf::from(d);
    }
    for cand in ["data", "../shared/data"] {
        if Path::new(cand).is_dir() {
            return PathBuf::from(cand);
        }
    }
    PathBuf::from("data")
}

/// Loads a model file, or builds a zoo architecture with fresh weights for `zoo:NAME`, with
/// the preprocessing flags applied over the model's own.
pub(crate) fn open_model(opts: &ModelOpts) -> Result<Model> {
    let arch = opts.arch.as_deref().map(parse_arch).transpose()?;
    let values = opts.preprocess.to_override();
    if let Some(name) = opts.model.to_str().and_then(|s| s.strip_prefix("zoo:")) {
        let arch = parse_arch(name)?;
        let mut model = Model::fresh(arch, &arch.default_config(), 0)?;
        model.override_preprocess(&values)?;
        return Ok(model);
    }
    if !opts.model.exists() {
        return Err(bad(format!("{}: no such file", opts.model.display())));
    }
    let load = ModelLoadOptions {
        arch,
        preprocess: values,
        input_shape: opts.input_shape.clone(),
    };
    Ok(load_model_with(&opts.model, &load)?)
}

/// [`open_model`] for a command that feeds data to the model: also says on stderr when the
/// preprocessing is a guess ([`note_default_preprocess`]).
pub(crate) fn open_model_for_data(opts: &ModelOpts) -> Result<Model> {
    let model = open_model(opts)?;
    note_default_preprocess(&opts.model, &model);
    Ok(model)
}

/// One line on stderr naming the default preprocessing values in use, if any, and the flags
/// that change them.
pub(crate) fn note_default_preprocess(path: &Path, model: &Model) {
    let fields = model.preprocess_origin.defaulted();
    if fields.is_empty() {
        return;
    }
    let p = &model.preprocess;
    let list = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let values: Vec<String> = fields
        .iter()
        .map(|&f| match f {
            "scale" if (p.scale - 1.0 / 255.0).abs() < 1e-9 => "scale 1/255".to_string(),
            "scale" => format!("scale {}", p.scale),
            "mean" => format!("mean {}", list(&p.mean)),
            _ => format!("std {}", list(&p.std)),
        })
        .collect();
    let flags: Vec<String> = fields.iter().map(|f| format!("--{f}")).collect();
    let why = match model.input_channels() {
        None | Some(3) => "the ImageNet statistics torchvision models expect",
        Some(_) => "pixels scaled to 0..1",
    };
    eprintln!(
        "note: {} names no input preprocessing; using the default {} ({why}); set {} to \
         change it",
        path.display(),
        values.join(", "),
        flags.join(", ")
    );
}

pub(crate) fn network(model: &Model, threads: Option<usize>) -> Result<Network> {
    if threads == Some(0) {
        return Err(bad("--threads 0: give at least 1 thread"));
    }
    let mut net = Network::new(model.graph.clone(), &model.weights)?;
    net.set_threads(threads)?;
    Ok(net)
}

/// Warns on stderr about every weight tensor of `model` holding NaN or infinite values
/// ([`shears::model::non_finite_weights`]) and returns them.
pub(crate) fn warn_non_finite(path: &Path, model: &Model) -> Vec<shears::model::NonFinite> {
    let bad = shears::model::non_finite_weights(&model.weights);
    for t in &bad {
        eprintln!("warning: {}: {t}", path.display());
    }
    bad
}

fn info(a: InfoArgs) -> Result<()> {
    let model = open_model(&a.model)?;
    let non_finite = warn_non_finite(&a.model.model, &model);
    if a.groups {
        return crate::prune_cmd::info_groups(&a.model.model, &model, a.json);
    }
    let s = shears::report::summarize(&model.graph);
    if a.json {
        print_json(&json!({
            "model": a.model.model,
            "arch": model.arch.map(|x| x.to_string()),
            "summary": s,
            "preprocess": model.preprocess,
            "preprocess_origin": model.preprocess_origin,
            "load_report": model.report.summary(),
            "non_finite": non_finite,
        }));
        return Ok(());
    }
    let mut t = Table::new(&["layer", "op", "output", "params", "MACs"]);
    for l in &s.layers {
        t.row(vec![
            l.name.clone(),
            l.op.clone(),
            format!("{:?}", l.output),
            if l.params > 0 {
                thousands(l.params)
            } else {
                String::new()
            },
            if l.macs > 0 {
                thousands(l.macs)
            } else {
                String::new()
            },
        ]);
    }
    print!("{}", t.render());
    println!();
    println!("input        {:?}", s.input);
    println!("output       {:?}", s.output);
    println!(
        "parameters   {} (weights, biases, BN affine)",
        thousands(s.params)
    );
    println!("BN buffers   {} (running statistics)", thousands(s.buffers));
    println!(
        "MACs         {} per image (conv and linear)",
        thousands(s.macs)
    );
    println!(
        "layers       {} conv, {} linear, {} nodes",
        s.convs, s.linears, s.nodes
    );
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let model = open_model_for_data(&a.model)?;
    warn_non_finite(&a.model.model, &model);
    let name = parse_dataset(&a.data)?;
    let dir = data_dir(&a.data_opts);
    let split = if a.train_split { Split::Train } else { a.split };
    if a.limit == Some(0) {
        return Err(bad("--limit 0: evaluate at least one image"));
    }
    let ds = shears_data::load(&dir, name, split)?;
    let mut net = network(&model, a.threads)?;
    let cfg = EvalConfig {
        batch_size: a.batch_size,
        limit: a.limit,
        verbosity: if a.json {
            Verbosity::Quiet
        } else {
            Verbosity::Normal
        },
    };
    if a.profile {
        crate::profile_out::start(&mut net);
    }
    let r = evaluate(&mut net, &ds, &model.preprocess, &cfg)?;
    let profile = crate::profile_out::collect(&net);
    if a.json {
        print_json(&json!({
            "model": a.model.model,
            "dataset": name.to_string(),
            "split": split.to_string(),
            "params": model.graph.n_params(),
            "macs": model.graph.macs(),
            "result": r,
            "profile": profile,
        }));
        return Ok(());
    }
    println!(
        "{} on {} ({} images, {})",
        a.model.model.display(),
        r.dataset,
        r.images,
        split
    );
    if !r.adapted.is_empty() {
        println!("input adapted: {}", r.adapted.join(", "));
    }
    println!("top-1   {:.2}%  ({} / {})", r.top1, r.correct, r.images);
    println!("top-5   {:.2}%", r.top5);
    println!("loss    {:.4}", r.loss);
    println!(
        "speed   {:.0} images/s ({:.2} s)",
        r.images_per_s, r.seconds
    );
    let mut t = Table::new(&["class", "correct", "total", "accuracy"]);
    for c in &r.per_class {
        t.row(vec![
            c.class.clone(),
            c.correct.to_string(),
            c.total.to_string(),
            format!("{:.2}%", c.accuracy),
        ]);
    }
    println!();
    print!("{}", t.render());
    if let Some(p) = &profile {
        print!("\n{}", crate::profile_out::render(p));
    }
    Ok(())
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    check_model_out(&a.output, &[])?;
    let name = parse_dataset(&a.data)?;
    let is_cifar = matches!(name, DatasetName::Cifar10 | DatasetName::Cifar100);
    let augment = a.augment.unwrap_or(is_cifar);
    let cfg = TrainConfig {
        augment_pad: augment.then_some(4),
        augment_flip: augment && is_cifar,
        early_stop: a.early_stop,
        seed: a.seed,
        ..a.optim.apply(TrainConfig::new(10)).map_err(bad)?
    };
    let arch = a.arch.as_deref().map(parse_arch).transpose()?;
    if a.vgg_head.is_some() && a.init.is_some() {
        return Err(bad(
            "--vgg-head builds a fresh VGG; with --init the model's own classifier is kept",
        ));
    }
    let mut model = match (&a.init, arch) {
        (Some(p), arch) => open_model_for_data(&ModelOpts {
            model: p.clone(),
            arch: arch.map(|x| x.to_string()),
            preprocess: a.preprocess.clone(),
            ..Default::default()
        })?,
        (None, Some(arch)) => {
            let mut cfg = arch.default_config();
            cfg.num_classes = name.n_classes();
            match a.vgg_head {
                Some(_)
                    if !matches!(arch, Arch::Vgg11 | Arch::Vgg13 | Arch::Vgg16 | Arch::Vgg19) =>
                {
                    return Err(bad(format!(
                        "--vgg-head applies to VGGs only; --arch {arch} has its own classifier"
                    )))
                }
                Some(VggHeadArg::Imagenet) => cfg.vgg_head = shears::zoo::VggHead::ImageNet,
                Some(VggHeadArg::Cifar) | None => cfg.vgg_head = shears::zoo::VggHead::Cifar,
            }
            let mut model = Model::fresh(arch, &cfg, a.seed)?;
            model.override_preprocess(&a.preprocess.to_override())?;
            model
        }
        (None, None) => {
            return Err(bad(
                "give --arch NAME to train from scratch, or --init MODEL",
            ))
        }
    };
    if a.resume {
        match &a.checkpoint_dir {
            None => return Err(bad("--resume needs --checkpoint-dir DIR")),
            Some(d) if !d.join(shears::train::CKPT_FILE).is_file() => eprintln!(
                "note: --resume: no checkpoint in {}; starting from scratch",
                d.display()
            ),
            Some(_) => {}
        }
    }
    let dir = data_dir(&a.data_opts);
    // Early stopping and the best epoch are judged on the validation hold-out of the training
    // files, never on the test split.
    let (mut train_set, mut val) = shears_data::load_train_val(&dir, name)?;
    if let Some(n) = a.limit {
        train_set = train_set.class_balanced_subset(n, a.seed);
    }
    if let Some(n) = a.val_limit {
        val = val.class_balanced_subset(n, a.seed);
    }
    let mut net = network(&model, a.threads)?;
    let sparse = crate::train_sparse::sparse_attach(&a, &mut net)?;
    let ckpt = CheckpointConfig {
        dir: a.checkpoint_dir.clone(),
        resume: a.resume,
        stop_after: None,
    };
    let verbosity = if a.json {
        Verbosity::Quiet
    } else {
        Verbosity::Normal
    };
    let report = train(
        &mut net,
        &train_set,
        Some(&val),
        &model.preprocess,
        &cfg,
        &ckpt,
        verbosity,
    )?;
    model.weights = net.weights();
    let sparse_summary = crate::train_sparse::sparse_finish(sparse, &mut net, &mut model, a.json);
    model
        .metadata
        .insert(shears::model::META_DATASET.into(), name.to_string());
    save_model_as(&a.output, &model)?;
    let last = report.epochs.last();
    if a.json {
        print_json(&json!({
            "output": a.output,
            "dataset": name.to_string(),
            "train_images": train_set.len(),
            "val_images": val.len(),
            "split": Split::Val,
            "config": cfg,
            "report": report,
            "sparse": sparse_summary,
        }));
    } else {
        println!(
            "trained {} epochs ({} images/epoch); final val top-1 {}; best {}; saved {}",
            report.epochs.len(),
            train_set.len(),
            last.and_then(|l| l.val_acc)
                .map(|v| format!("{v:.2}%"))
                .unwrap_or("-".into()),
            report
                .best_val_acc
                .map(|v| format!("{v:.2}%"))
                .unwrap_or("-".into()),
            a.output.display()
        );
    }
    Ok(())
}

fn data(a: DataArgs) -> Result<()> {
    match a.command {
        DataCommand::Fetch {
            name,
            data_opts,
            overwrite,
            json,
        } => {
            let name = parse_dataset(&name)?;
            let dir = data_dir(&data_opts);
            let opts = FetchOptions {
                overwrite,
                progress: !json,
                ..Default::default()
            };
            let r = shears_data::fetch(&dir, name, &opts)?;
            if json {
                let files: Vec<_> = r
                    .files
                    .iter()
                    .map(|(f, act)| json!({"file": f, "action": format!("{act:?}")}))
                    .collect();
                print_json(&json!({"dataset": name.to_string(), "dir": r.dir, "files": files}));
            } else {
                for (f, act) in &r.files {
                    println!("{f}: {act:?}");
                }
            }
            Ok(())
        }
        DataCommand::Verify {
            name,
            data_opts,
            json,
        } => {
            let name = parse_dataset(&name)?;
            let dir = data_dir(&data_opts);
            let r = shears_data::verify_files(&dir, name)?;
            let ok = r.iter().all(|(_, s)| matches!(s, FileStatus::Ok));
            if json {
                let files: Vec<_> = r
                    .iter()
                    .map(|(f, s)| json!({"file": f, "status": format!("{s:?}")}))
                    .collect();
                print_json(&json!({"dataset": name.to_string(), "ok": ok, "files": files}));
            } else {
                for (f, s) in &r {
                    println!("{f}: {s:?}");
                }
            }
            if !ok {
                bail!(bad(format!(
                    "{name}: some files are missing or do not match their checksums"
                )));
            }
            Ok(())
        }
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    match a.command {
        BenchCommand::Engine(a) => crate::bench_engine::run(a),
    }
}
