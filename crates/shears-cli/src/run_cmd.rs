//! `shears run`: inference on the user's own tensor, `.npy` in, `.npy` out.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use shears_engine::Mode;
use shears_io::{read_npy, write_npy};
use shears_ir::Tensor;

use crate::args::RunArgs;
use crate::commands::{bad, network, open_model, open_model_for_data};
use crate::output::print_json;
use crate::profile_out;

/// Runs `shears run`.
pub fn run(a: RunArgs) -> Result<()> {
    if a.batch == 0 {
        return Err(bad("--batch 0: a forward pass needs at least one sample"));
    }
    crate::commands::check_out(&a.output, &[&a.model.model, &a.input])?;
    let model = if a.preprocess {
        open_model_for_data(&a.model)?
    } else {
        open_model(&a.model)?
    };
    let graph = &model.graph;
    let [input] = graph.inputs()[..] else {
        return Err(bad(format!(
            "{}: `shears run` feeds one input, the model has {}",
            a.model.model.display(),
            graph.inputs().len()
        )));
    };
    let per_sample = graph.shape(input).to_vec();
    let raw = read_npy(&a.input)?;
    let mut x = batched(raw, &per_sample).map_err(|why| {
        bad(format!(
            "--input {}: {why}; the model takes [N, {}] (NCHW) or one sample [{}]",
            a.input.display(),
            dims(&per_sample),
            dims(&per_sample)
        ))
    })?;
    if a.preprocess {
        model
            .preprocess_input(&mut x)
            .map_err(|e| bad(format!("--input {}: {e}", a.input.display())))?;
    }
    let mut net = network(&model, a.threads)?;
    if a.profile {
        // Warm-up: the first pass plans the steps and packs the weights.
        forward_in_chunks(&mut net, &x, a.batch)?;
        profile_out::start(&mut net);
    }
    let t0 = Instant::now();
    let y = forward_in_chunks(&mut net, &x, a.batch)?;
    let seconds = t0.elapsed().as_secs_f64();
    let profile = profile_out::collect(&net);
    write_npy(&a.output, &y)?;
    let n = x.shape()[0];
    if a.json {
        print_json(&json!({
            "model": a.model.model,
            "input": a.input,
            "input_shape": x.shape(),
            "output": a.output,
            "output_shape": y.shape(),
            "preprocessed": a.preprocess,
            "batch": a.batch,
            "seconds": seconds,
            "samples_per_s": n as f64 / seconds.max(1e-12),
            "profile": profile,
        }));
        return Ok(());
    }
    println!(
        "{} -> {}: input {:?}, output {:?}, {:.3} s ({:.0} samples/s)",
        a.input.display(),
        a.output.display(),
        x.shape(),
        y.shape(),
        seconds,
        n as f64 / seconds.max(1e-12)
    );
    if let Some(p) = &profile {
        print!("\n{}", profile_out::render(p));
    }
    Ok(())
}

/// `d1, d2, ...` for messages.
fn dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `x` as a batch `[N, ...per_sample]`: already one, or one sample without the batch axis.
fn batched(x: Tensor, per_sample: &[usize]) -> Result<Tensor, String> {
    let shape = x.shape().to_vec();
    if shape == per_sample {
        let mut with_batch = vec![1];
        with_batch.extend_from_slice(per_sample);
        return Ok(x.reshape(with_batch).expect("same number of values"));
    }
    match shape.split_first() {
        Some((&n, rest)) if rest == per_sample && n > 0 => Ok(x),
        Some((0, rest)) if rest == per_sample => Err("the batch is empty".into()),
        _ => Err(format!("shape {shape:?} does not fit the model input")),
    }
}

/// The model's first output on `x`, computed `batch` samples at a time and concatenated
/// along the batch axis.
fn forward_in_chunks(net: &mut shears_engine::Network, x: &Tensor, batch: usize) -> Result<Tensor> {
    let n = x.shape()[0];
    let per_sample: usize = x.shape()[1..].iter().product();
    let mut out = Vec::new();
    let mut out_shape = Vec::new();
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let mut shape = x.shape().to_vec();
        shape[0] = b;
        let data = x.data()[start * per_sample..(start + b) * per_sample].to_vec();
        let chunk = Tensor::new(shape, data).expect("a slice of whole samples");
        let y = net.forward(&chunk, Mode::Eval)?;
        if out_shape.is_empty() {
            out_shape = y.shape().to_vec();
            out.reserve(n * y.numel() / b);
        }
        out.extend_from_slice(y.data());
    }
    out_shape[0] = n;
    Ok(Tensor::new(out_shape, out).expect("every chunk has the same per-sample shape"))
}
