//! `shears demo`: the whole pipeline on the shipped default, MNIST and the LeNet-5.
//!
//! 1. Weights: `--weights`, or a LeNet-5 trained now for one epoch (Adam 1e-3).
//! 2. Sensitivity analysis: a per-group prune-and-evaluate sweep
//!    ([`shears::analyze::sweep`]) on a class-balanced subset of the *validation* hold-out of
//!    the training files (never trained on; the test split is kept for the final numbers), then
//!    the per-group ratios that keep half of the MACs with the least loss increase
//!    ([`shears::analyze::sweep::ratios_for_macs`]).
//! 3. Pruning to those ratios (L1 chooses the channels inside each group).
//! 4. CASM recovery ([`shears::recover::casm`]) from training samples.
//! 5. A table of accuracy, parameters, MACs and measured latency for the original, the pruned
//!    and the recovered model (latency of original and pruned in alternating warm blocks).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use shears::analyze::sweep::{ratios_for_macs, sweep, EvalSet, SweepConfig};
use shears::eval::{evaluate, EvalConfig, EvalReport};
use shears::model::{save_model_as, Model};
use shears::progress::Verbosity;
use shears::prune::{self, AllocConfig, Criterion, Reduction, ScoreContext, Strategy};
use shears::recover::{casm, CasmConfig, CasmReport};
use shears::report::{compare_latency, Latency};
use shears::train::{train, CheckpointConfig, OptimizerKind, Schedule, TrainConfig};
use shears::zoo::Arch;
use shears_data::{DatasetName, FetchOptions, Split};

use crate::args::{DemoArgs, ModelOpts};
use crate::commands::{bad, data_dir, network, open_model};
use crate::output::{print_json, thousands, Table};

/// One row of the final table.
#[derive(Serialize)]
struct Stage {
    stage: String,
    top1: f64,
    params: u64,
    macs: u64,
    latency_b1_ms: f64,
    latency_b64_ms: f64,
}

/// Seconds each step took.
#[derive(Serialize)]
struct Timings {
    train: Option<f64>,
    sensitivity: f64,
    prune: f64,
    casm: f64,
    total: f64,
}

#[derive(Serialize)]
struct DemoResult {
    data_dir: PathBuf,
    weights: String,
    train_images: usize,
    train_seconds: Option<f64>,
    /// The original model on the test split.
    eval: EvalReport,
    params: u64,
    macs: u64,
    /// Latency of the original model.
    latency_b1: Latency,
    latency_b64: Latency,
    /// Per-group ratios (fraction removed) chosen by the sensitivity analysis.
    ratios: BTreeMap<String, f32>,
    /// Images the sweep evaluated each probe on.
    sensitivity_images: usize,
    /// The split the sweep measured on (the validation hold-out).
    sensitivity_split: Split,
    /// Probes (prune one group, evaluate) the sweep ran.
    sensitivity_probes: usize,
    pruned_eval: EvalReport,
    recovered_eval: EvalReport,
    casm: CasmReport,
    stages: Vec<Stage>,
    timings: Timings,
    threads: usize,
    output: Option<PathBuf>,
}

/// Runs `shears demo`.
pub fn run(a: DemoArgs) -> Result<()> {
    let t_all = Instant::now();
    if let Some(out) = &a.output {
        crate::commands::check_model_out(out, &[])?;
    }
    let dir = data_dir(&a.data_opts);
    let quiet = a.json;
    let verbosity = if quiet {
        Verbosity::Quiet
    } else {
        Verbosity::Normal
    };
    let say = |s: &str| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    if a.casm_samples == 0 {
        return Err(bad("--casm-samples 0: CASM needs at least one sample"));
    }
    let name = DatasetName::Mnist;
    let test = match shears_data::load(&dir, name, Split::Test) {
        Ok(d) => d,
        Err(shears_data::DataError::Missing { .. }) => {
            say(&format!(
                "MNIST not found in {}; downloading the official files",
                dir.display()
            ));
            shears_data::fetch(
                &dir,
                name,
                &FetchOptions {
                    progress: !quiet,
                    ..Default::default()
                },
            )?;
            shears_data::load(&dir, name, Split::Test)?
        }
        Err(e) => return Err(e.into()),
    };
    let (full_train, val) = shears_data::load_train_val(&dir, name)?;
    let arch = Arch::LeNet5;
    let (model, weights_desc, train_images, train_seconds) = match &a.weights {
        Some(p) => (
            open_model(&ModelOpts {
                model: p.clone(),
                arch: Some(arch.to_string()),
                ..Default::default()
            })?,
            p.display().to_string(),
            0,
            None,
        ),
        None => {
            let mut model = Model::fresh(arch, &arch.default_config(), a.seed)?;
            let train_set = match a.limit {
                Some(n) => full_train.class_balanced_subset(n, a.seed),
                None => full_train.clone(),
            };
            say(&format!(
                "[1/5] training LeNet-5 on {} MNIST images for one epoch",
                train_set.len()
            ));
            let mut net = network(&model, a.threads)?;
            let mut cfg = TrainConfig::new(1);
            cfg.optimizer = OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
            };
            cfg.lr = 1e-3;
            cfg.weight_decay = 0.0;
            cfg.batch_size = 64;
            cfg.schedule = Schedule::Constant;
            cfg.seed = a.seed;
            let t0 = Instant::now();
            train(
                &mut net,
                &train_set,
                None,
                &model.preprocess,
                &cfg,
                &CheckpointConfig::default(),
                verbosity,
            )?;
            let secs = t0.elapsed().as_secs_f64();
            model.weights = net.weights();
            (
                model,
                "trained now (1 epoch, Adam 1e-3)".to_string(),
                train_set.len(),
                Some(secs),
            )
        }
    };
    let pre = model.preprocess.clone();
    let eval_cfg = EvalConfig {
        verbosity,
        ..Default::default()
    };
    let mut net = network(&model, a.threads)?;
    let base = evaluate(&mut net, &test, &pre, &eval_cfg)?;
    say(&format!("      test top-1 {:.2}%", base.top1));

    // Sensitivity analysis on the validation hold-out: selection never sees the test split.
    say(&format!(
        "[2/5] sensitivity analysis: every group pruned alone at 25/50/75/90% (L1), evaluated \
         on {} class-balanced validation images (held out of training)",
        a.sensitivity_images
    ));
    let t0 = Instant::now();
    let input = model.graph.shape(model.graph.inputs()[0]).to_vec();
    let mut evalset = EvalSet::balanced(&val, a.sensitivity_images, a.seed, &pre, &input)?;
    evalset.split = Some(Split::Val);
    let scfg = SweepConfig {
        verbosity,
        ..SweepConfig::new(vec![0.25, 0.5, 0.75, 0.9])
    };
    let sw = sweep(&model.graph, &model.weights, &evalset, &scfg)?;
    let sel = ratios_for_macs(&model.graph, &model.weights, &sw, 0.5)?;
    let sensitivity_seconds = t0.elapsed().as_secs_f64();
    for c in &sw.groups {
        say(&format!(
            "      {:<8} ({:>3} ch): accuracy {}  -> remove {:.0}%",
            c.root,
            c.size,
            c.points
                .iter()
                .map(|p| format!("{:.0}%@{:.1}", 100.0 * p.ratio, 100.0 * p.accuracy))
                .collect::<Vec<_>>()
                .join(" "),
            100.0 * sel.ratios.get(&c.root).copied().unwrap_or(0.0)
        ));
    }

    // Prune to those ratios.
    say("[3/5] pruning to half the MACs with those per-group ratios");
    let t0 = Instant::now();
    let l1 = Criterion::L1.build(Reduction::Mean, a.seed);
    let plan = prune::plan(
        &ScoreContext::new(&model.graph, &model.weights),
        l1.as_ref(),
        &AllocConfig::new(Strategy::PerGroup {
            ratios: sel.ratios.clone(),
        }),
    )?;
    let pruned = prune::prune(&model.graph, &model.weights, &plan)?;
    let prune_seconds = t0.elapsed().as_secs_f64();
    let pruned_model = Model {
        graph: pruned.graph.clone(),
        weights: pruned.weights.clone(),
        ..model.clone()
    };
    let mut pnet = network(&pruned_model, a.threads)?;
    let pruned_eval = evaluate(&mut pnet, &test, &pre, &eval_cfg)?;
    say(&format!(
        "      MACs {} -> {}, test top-1 {:.2}%",
        thousands(model.graph.macs()),
        thousands(pruned.graph.macs()),
        pruned_eval.top1
    ));

    // CASM recovery.
    say(&format!(
        "[4/5] CASM recovery from {} training images",
        a.casm_samples
    ));
    let ccfg = CasmConfig {
        samples: a.casm_samples,
        epochs_per_layer: 10,
        batch_size: 50,
        seed: a.seed,
        verbosity,
        ..CasmConfig::default()
    };
    let (rw, crep) = casm(
        (&model.graph, &model.weights),
        (&pruned.graph, &pruned.weights),
        &full_train,
        &pre,
        &ccfg,
    )?;
    let mut rnet = network(&pruned_model, a.threads)?;
    rnet.set_weights(&rw)?;
    let recovered_eval = evaluate(&mut rnet, &test, &pre, &eval_cfg)?;
    let casm_seconds = crep.seconds;
    say(&format!(
        "      {:.1} s, test top-1 {:.2}%",
        crep.seconds, recovered_eval.top1
    ));

    // Latency, original and pruned in alternating blocks (the recovered model has the pruned shape).
    say("[5/5] measuring latency (original and pruned in alternating blocks)");
    let (o1, p1) = compare_latency(&mut net, &mut rnet, 1, 5, 50)?;
    let (o64, p64) = compare_latency(&mut net, &mut rnet, 64, 2, 10)?;
    let stages = vec![
        Stage {
            stage: "original".into(),
            top1: base.top1,
            params: model.graph.n_params(),
            macs: model.graph.macs(),
            latency_b1_ms: o1.median_ms,
            latency_b64_ms: o64.median_ms,
        },
        Stage {
            stage: "pruned".into(),
            top1: pruned_eval.top1,
            params: pruned.graph.n_params(),
            macs: pruned.graph.macs(),
            latency_b1_ms: p1.median_ms,
            latency_b64_ms: p64.median_ms,
        },
        Stage {
            stage: "pruned + CASM".into(),
            top1: recovered_eval.top1,
            params: pruned.graph.n_params(),
            macs: pruned.graph.macs(),
            latency_b1_ms: p1.median_ms,
            latency_b64_ms: p64.median_ms,
        },
    ];
    if let Some(out) = &a.output {
        let mut m = pruned_model.clone();
        m.weights = rw.clone();
        m.metadata
            .insert(shears::model::META_DATASET.into(), "mnist".into());
        save_model_as(out, &m)?;
    }
    let res = DemoResult {
        data_dir: dir,
        weights: weights_desc,
        train_images,
        train_seconds,
        params: model.graph.n_params(),
        macs: model.graph.macs(),
        eval: base,
        latency_b1: o1,
        latency_b64: o64,
        ratios: sel.ratios,
        sensitivity_images: sw.images,
        sensitivity_split: Split::Val,
        sensitivity_probes: sw.computed + sw.reused,
        pruned_eval,
        recovered_eval,
        casm: crep,
        stages,
        timings: Timings {
            train: train_seconds,
            sensitivity: sensitivity_seconds,
            prune: prune_seconds,
            casm: casm_seconds,
            total: t_all.elapsed().as_secs_f64(),
        },
        threads: net.num_threads(),
        output: a.output.clone(),
    };
    if a.json {
        print_json(&res);
        return Ok(());
    }
    println!();
    println!(
        "shears demo: LeNet-5 on MNIST ({}), {} test images",
        res.weights, res.eval.images
    );
    let mut t = Table::new(&[
        "model",
        "top-1",
        "params",
        "MACs",
        "latency b1 (ms)",
        "latency b64 (ms)",
    ]);
    for s in &res.stages {
        t.row(vec![
            s.stage.clone(),
            format!("{:.2}%", s.top1),
            thousands(s.params),
            thousands(s.macs),
            format!("{:.3}", s.latency_b1_ms),
            format!("{:.2}", s.latency_b64_ms),
        ]);
    }
    print!("{}", t.render());
    let o = &res.stages[0];
    let r = &res.stages[2];
    println!(
        "reduction: {:.2}x MACs, {:.2}x parameters, {:.2}x faster at batch 1, {:.2}x at batch \
         64 (median of 50 and 10 runs in alternating blocks, {} threads)",
        o.macs as f64 / r.macs as f64,
        o.params as f64 / r.params as f64,
        o.latency_b1_ms / r.latency_b1_ms,
        o.latency_b64_ms / r.latency_b64_ms,
        res.threads
    );
    let tm = &res.timings;
    println!(
        "time: {}sensitivity {:.1} s ({} probes on {} images), pruning {:.2} s, CASM {:.1} s; \
         {:.0} s in all",
        tm.train
            .map(|s| format!("training {s:.1} s, "))
            .unwrap_or_default(),
        tm.sensitivity,
        res.sensitivity_probes,
        res.sensitivity_images,
        tm.prune,
        tm.casm,
        tm.total
    );
    if let Some(out) = &res.output {
        println!("wrote {}", out.display());
    }
    Ok(())
}
