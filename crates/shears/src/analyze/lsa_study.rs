//! The LSA feature-pruning study (methods §1.3): for every seed a head trained on all features,
//! its LSA, and for every `p` and `r` a new head on the features left after removing the least
//! sensitive fraction `r`, with magnitude and random selection as baselines ([`run_study`]).
//! Re-exported by [`super::lsa`].

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::lsa::{
    kept, least_sensitive, permutation, train_head, Features, HeadConfig, OutputAgg, Outputs, PNorm,
};
use super::shard::{Assignment, Shard};
use crate::progress::{Progress, Verbosity};
use crate::Error;

/// How features are chosen for removal.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "p")]
pub enum Selection {
    /// LSA with this p-norm: the least sensitive features go first.
    Lsa(PNorm),
    /// The smallest L2 norms of the first dense layer's input columns go first.
    Magnitude,
    /// A seeded random choice.
    Random,
}

impl Selection {
    /// A short label: `lsa p=2`, `magnitude`, `random`.
    pub fn label(&self) -> String {
        match self {
            Selection::Lsa(p) => format!("lsa p={p}"),
            Selection::Magnitude => "magnitude".into(),
            Selection::Random => "random".into(),
        }
    }
}

/// The grid and settings of a study.
#[derive(Clone, Debug, Serialize)]
pub struct StudyConfig {
    /// The p-norms; default 1, 2, 3, 4, inf.
    pub ps: Vec<PNorm>,
    /// Reduction levels (fraction of features removed); default 0.1, 0.2, ..., 0.9.
    pub ratios: Vec<f64>,
    /// Seeds (head initialisation and shuffling, random selection); default 0, 1, 2.
    pub seeds: Vec<u64>,
    /// Training samples the sensitivities are averaged over (a class-interleaved prefix);
    /// default 1000.
    pub lsa_samples: usize,
    /// Softmax probabilities or logits; default softmax.
    pub outputs: Outputs,
    /// Aggregation over outputs; default max.
    pub output_agg: OutputAgg,
    /// The head and its training.
    pub head: HeadConfig,
    /// Also run magnitude and random selection at every (r, seed); default true.
    pub baselines: bool,
    /// Train and evaluate only this shard's heads ([`study_assignment`]); default all.
    #[serde(skip)]
    pub shard: Option<Shard>,
    /// Progress display.
    #[serde(skip)]
    pub verbosity: Verbosity,
}

impl Default for StudyConfig {
    fn default() -> Self {
        StudyConfig {
            ps: [1.0, 2.0, 3.0, 4.0]
                .into_iter()
                .map(|p| PNorm::new(p).expect("p >= 1"))
                .chain([PNorm::INF])
                .collect(),
            ratios: (1..=9).map(|i| f64::from(i) / 10.0).collect(),
            seeds: vec![0, 1, 2],
            lsa_samples: 1000,
            outputs: Outputs::Softmax,
            output_agg: OutputAgg::Max,
            head: HeadConfig::default(),
            baselines: true,
            shard: None,
            verbosity: Verbosity::Normal,
        }
    }
}

/// One trained and evaluated head of the grid.
#[derive(Clone, Debug, Serialize)]
pub struct StudyRow {
    /// How features were removed.
    pub selection: Selection,
    /// Reduction level.
    pub ratio: f64,
    /// Seed.
    pub seed: u64,
    /// Features kept.
    pub d_kept: usize,
    /// Trainable parameters of the head.
    pub head_params: u64,
    /// Validation top-1 accuracy in percent: what selects the best `(p, r)`.
    pub val_accuracy: f64,
    /// Test top-1 accuracy in percent: reported, never used to select.
    pub accuracy: f64,
}

/// Summary of one selection method over the grid.
#[derive(Clone, Debug, Serialize)]
pub struct SelectionSummary {
    /// `lsa` (all p together), `lsa p=...`, `magnitude` or `random`.
    pub method: String,
    /// Heads trained.
    pub runs: usize,
    /// Mean accuracy over p, r and seeds.
    pub mean: f64,
    /// Volatility: population standard deviation of the accuracy over p, r and seeds.
    pub std: f64,
    /// Mean over (p, r) cells of the standard deviation over seeds.
    pub seed_std: f64,
    /// The (p, r) with the highest mean *validation* accuracy over seeds (p empty for
    /// baselines).
    pub best_p: Option<PNorm>,
    /// Its reduction level.
    pub best_ratio: f64,
    /// Its mean validation accuracy (the selection criterion).
    pub best_val_accuracy: f64,
    /// Its mean test accuracy (reported; the test split selected nothing).
    pub best_accuracy: f64,
    /// The largest r whose mean validation accuracy is within 1 point of the unpruned head's
    /// mean validation accuracy.
    pub max_ratio_within_1pt: Option<f64>,
}

/// The result of [`run_study`].
#[derive(Clone, Debug, Serialize)]
pub struct StudyResult {
    /// Features per sample.
    pub d: usize,
    /// Training samples.
    pub n_train: usize,
    /// Validation samples (the held-out part of the training files).
    pub n_val: usize,
    /// Test samples.
    pub n_test: usize,
    /// Test accuracy of the unpruned head per seed.
    pub base: Vec<(u64, f64)>,
    /// Validation accuracy of the unpruned head per seed.
    pub base_val: Vec<(u64, f64)>,
    /// Every pruned head.
    pub rows: Vec<StudyRow>,
    /// Per method summaries: `lsa` over all p, each `lsa p=...`, `magnitude`, `random`.
    pub summary: Vec<SelectionSummary>,
    /// Wall-clock seconds of the grid.
    pub seconds: f64,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// Summarises the rows selected by `pick` under the name `method`; `base_val_mean` is the
/// unpruned heads' mean validation accuracy. Choices are made on validation accuracy.
fn summarize(
    method: &str,
    rows: &[StudyRow],
    base_val_mean: f64,
    pick: impl Fn(&Selection) -> bool,
) -> Option<SelectionSummary> {
    let sel: Vec<&StudyRow> = rows.iter().filter(|r| pick(&r.selection)).collect();
    if sel.is_empty() {
        return None;
    }
    let accs: Vec<f64> = sel.iter().map(|r| r.accuracy).collect();
    let (mean, std) = mean_std(&accs);
    // Cells (p, r) in first-appearance order: test and validation accuracies per seed.
    let mut cells: Vec<(Selection, f64, Vec<f64>, Vec<f64>)> = Vec::new();
    for r in &sel {
        match cells
            .iter_mut()
            .find(|c| c.0 == r.selection && c.1 == r.ratio)
        {
            Some(c) => {
                c.2.push(r.accuracy);
                c.3.push(r.val_accuracy);
            }
            None => cells.push((r.selection, r.ratio, vec![r.accuracy], vec![r.val_accuracy])),
        }
    }
    let seed_std = cells.iter().map(|c| mean_std(&c.2).1).sum::<f64>() / cells.len() as f64;
    let best = cells
        .iter()
        .fold(
            None,
            |b: Option<&(Selection, f64, Vec<f64>, Vec<f64>)>, c| match b {
                Some(b) if mean_std(&b.3).0 >= mean_std(&c.3).0 => Some(b),
                _ => Some(c),
            },
        )
        .expect("at least one cell");
    let (best_sel, best_ratio) = (best.0, best.1);
    let (best_acc, best_val) = (mean_std(&best.2).0, mean_std(&best.3).0);
    let max_ratio_within_1pt = cells
        .iter()
        .filter(|c| mean_std(&c.3).0 >= base_val_mean - 1.0)
        .map(|c| c.1)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    Some(SelectionSummary {
        method: method.to_string(),
        runs: sel.len(),
        mean,
        std,
        seed_std,
        best_p: match best_sel {
            Selection::Lsa(p) => Some(p),
            _ => None,
        },
        best_ratio,
        best_val_accuracy: best_val,
        best_accuracy: best_acc,
        max_ratio_within_1pt,
    })
}

/// The LSA feature-pruning study (methods §1.3, order (a)): for every seed, train a head on all
/// features of `train`, compute its LSA over `lsa_samples` training samples, and for every
/// `p` and `r` remove the `floor(r * d)` least sensitive features, train a new head (same seed)
/// on the rest and evaluate it on `val` and `test`; with `baselines`, the same with magnitude
/// and random selection. The summaries' best `(p, r)` and ratio within one point are chosen on
/// `val`; `test` accuracies are reported beside them and select nothing.
pub fn run_study(
    train: &Features,
    val: &Features,
    test: &Features,
    cfg: &StudyConfig,
) -> Result<StudyResult, Error> {
    for (what, other) in [("validation", val), ("test", test)] {
        if train.d != other.d || train.classes != other.classes {
            return Err(Error::invalid(format!(
                "training features ({} features, {} classes) and {what} features ({}, {}) differ",
                train.d, train.classes, other.d, other.classes
            )));
        }
    }
    if cfg.ps.is_empty() || cfg.ratios.is_empty() || cfg.seeds.is_empty() {
        return Err(Error::invalid(
            "the study needs at least one p, one r and one seed",
        ));
    }
    if cfg.lsa_samples == 0 {
        return Err(Error::invalid("LSA needs at least one sample"));
    }
    for &r in &cfg.ratios {
        least_sensitive(&[], r)?;
    }
    let start = std::time::Instant::now();
    let sels = selections(cfg);
    let per_seed = 1 + sels.len() * cfg.ratios.len();
    let mine = study_assignment(train.d, cfg);
    let bar = Progress::new(mine.len() as u64, "lsa study", cfg.verbosity);
    let all: Vec<usize> = (0..train.d).collect();
    let lsa_rows = train.balanced_prefix(cfg.lsa_samples);
    let mut base = Vec::new();
    let mut base_val = Vec::new();
    let mut rows = Vec::new();
    for (si, &seed) in cfg.seeds.iter().enumerate() {
        let first = si * per_seed;
        if !(first..first + per_seed).any(|i| mine.owns(i)) {
            continue;
        }
        // Every probe of the seed needs its unpruned head (for the LSA and the magnitudes).
        let mut head = train_head(train, &all, &cfg.head, seed)?;
        if mine.owns(first) {
            let acc = head.accuracy(test)?;
            base.push((seed, acc));
            base_val.push((seed, head.accuracy(val)?));
            bar.inc(1);
            bar.println(&format!("seed {seed}: unpruned head {acc:.2}%"));
        }
        let jac = head.jacobian(train, &lsa_rows, cfg.outputs, true)?;
        let mags = head.column_norms();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0a11_5e1e_c7ed);
        let rand_order = permutation(train.d, &mut rng);
        for (j, sel) in sels.iter().enumerate() {
            let scores: Vec<f64> = match sel {
                Selection::Lsa(p) => jac.scores(*p, cfg.output_agg),
                Selection::Magnitude => mags.clone(),
                Selection::Random => {
                    let mut s = vec![0.0; train.d];
                    for (rank, &i) in rand_order.iter().enumerate() {
                        s[i] = rank as f64;
                    }
                    s
                }
            };
            for (k, &r) in cfg.ratios.iter().enumerate() {
                if !mine.owns(first + 1 + j * cfg.ratios.len() + k) {
                    continue;
                }
                let removed = least_sensitive(&scores, r)?;
                let keep = kept(train.d, &removed);
                let mut h = train_head(train, &keep, &cfg.head, seed)?;
                let accuracy = h.accuracy(test)?;
                let val_accuracy = h.accuracy(val)?;
                rows.push(StudyRow {
                    selection: *sel,
                    ratio: r,
                    seed,
                    d_kept: keep.len(),
                    head_params: h.n_params(),
                    val_accuracy,
                    accuracy,
                });
                bar.inc(1);
                bar.set_message(format!(
                    "{} r={r:.2} seed {seed}: {accuracy:.2}%",
                    sel.label()
                ));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish(&format!(
        "lsa study: {} heads in {seconds:.1} s",
        rows.len() + base.len()
    ));
    Ok(finish_study(
        StudyParts {
            d: train.d,
            n_train: train.n,
            n_val: val.n,
            n_test: test.n,
            base,
            base_val,
            rows,
            seconds,
        },
        cfg,
    ))
}

/// The selections of a study, in grid order: LSA for every `p`, then magnitude and random.
pub fn selections(cfg: &StudyConfig) -> Vec<Selection> {
    let mut sels: Vec<Selection> = cfg.ps.iter().map(|&p| Selection::Lsa(p)).collect();
    if cfg.baselines {
        sels.push(Selection::Magnitude);
        sels.push(Selection::Random);
    }
    sels
}

/// The heads of the grid `cfg.shard` owns (all without one). Per seed, probe 0 is the unpruned
/// head and probe `1 + j * ratios + k` the head after selection `j` at ratio `k`; each costs
/// its kept features (head training is linear in them). A shard also trains the unpruned head
/// of every seed it has a probe of, which the costs do not count.
pub fn study_assignment(d: usize, cfg: &StudyConfig) -> Assignment {
    let sels = selections(cfg).len();
    let per_seed: Vec<u64> = std::iter::once(d as u64)
        .chain((0..sels).flat_map(|_| {
            cfg.ratios
                .iter()
                .map(|&r| (d - (r * d as f64 + 1e-9).floor() as usize).max(1) as u64)
        }))
        .collect();
    let costs: Vec<u64> = cfg
        .seeds
        .iter()
        .flat_map(|_| per_seed.iter().copied())
        .collect();
    Assignment::new(&costs, cfg.shard)
}

/// The measured parts of a study, before its summaries.
#[derive(Clone, Debug)]
pub struct StudyParts {
    /// Features per sample.
    pub d: usize,
    /// Training samples.
    pub n_train: usize,
    /// Validation samples.
    pub n_val: usize,
    /// Test samples.
    pub n_test: usize,
    /// Test accuracy of the unpruned head per seed, in seed order.
    pub base: Vec<(u64, f64)>,
    /// Validation accuracy of the unpruned head per seed, in seed order.
    pub base_val: Vec<(u64, f64)>,
    /// The pruned heads, in grid order.
    pub rows: Vec<StudyRow>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The [`StudyResult`] of `p`: its summaries per method (the same code for one run and for
/// merged shards).
pub fn finish_study(p: StudyParts, cfg: &StudyConfig) -> StudyResult {
    let StudyParts {
        d,
        n_train,
        n_val,
        n_test,
        base,
        base_val,
        rows,
        seconds,
    } = p;
    let base_mean = mean_std(&base_val.iter().map(|b| b.1).collect::<Vec<_>>()).0;
    let mut summary = Vec::new();
    summary.extend(summarize("lsa", &rows, base_mean, |s| {
        matches!(s, Selection::Lsa(_))
    }));
    for &p in &cfg.ps {
        summary.extend(summarize(
            &Selection::Lsa(p).label(),
            &rows,
            base_mean,
            |s| *s == Selection::Lsa(p),
        ));
    }
    summary.extend(summarize("magnitude", &rows, base_mean, |s| {
        *s == Selection::Magnitude
    }));
    summary.extend(summarize("random", &rows, base_mean, |s| {
        *s == Selection::Random
    }));
    StudyResult {
        d,
        n_train,
        n_val,
        n_test,
        base,
        base_val,
        rows,
        summary,
        seconds,
    }
}

/// The study's rows as CSV: `selection,p,ratio,seed,d_kept,head_params,val_accuracy,accuracy`
/// (accuracy on the test split), with the unpruned heads as `none` rows at ratio 0.
pub fn study_csv(res: &StudyResult) -> String {
    let mut s = String::from("selection,p,ratio,seed,d_kept,head_params,val_accuracy,accuracy\n");
    for ((seed, acc), (_, val)) in res.base.iter().zip(&res.base_val) {
        s.push_str(&format!("none,,0,{seed},{},,{val:.4},{acc:.4}\n", res.d));
    }
    for r in &res.rows {
        let (name, p) = match r.selection {
            Selection::Lsa(p) => ("lsa", p.to_string()),
            Selection::Magnitude => ("magnitude", String::new()),
            Selection::Random => ("random", String::new()),
        };
        s.push_str(&format!(
            "{name},{p},{},{},{},{},{:.4},{:.4}\n",
            r.ratio, r.seed, r.d_kept, r.head_params, r.val_accuracy, r.accuracy
        ));
    }
    s
}

/// Mean accuracy over seeds per reduction level for one selection: `(r, mean)` points in the
/// order of the grid, starting with the unpruned heads' mean at r = 0.
pub fn curve(res: &StudyResult, sel: Selection) -> Vec<(f64, f64)> {
    let base = mean_std(&res.base.iter().map(|b| b.1).collect::<Vec<_>>()).0;
    let mut pts: Vec<(f64, Vec<f64>)> = Vec::new();
    for r in res.rows.iter().filter(|r| r.selection == sel) {
        match pts.iter_mut().find(|p| p.0 == r.ratio) {
            Some(p) => p.1.push(r.accuracy),
            None => pts.push((r.ratio, vec![r.accuracy])),
        }
    }
    std::iter::once((0.0, base))
        .chain(pts.into_iter().map(|(r, v)| (r, mean_std(&v).0)))
        .collect()
}
