//! `shears export`: write a model as ONNX and / or as self-describing safetensors.

use anyhow::{Context, Result};
use serde_json::json;
use shears::model::{runtime_metadata, save_model};
use shears_io::{export_onnx, Format, OnnxExportOptions};

use crate::args::ExportArgs;
use crate::commands::{bad, check_out, open_model};
use crate::output::{print_json, thousands};

/// Runs `shears export`.
pub fn run(a: ExportArgs) -> Result<()> {
    if a.batch == Some(0) {
        return Err(bad("--batch 0: the ONNX batch size must be at least 1"));
    }
    if a.batch.is_some() && a.onnx.is_none() {
        return Err(bad(
            "--batch fixes the ONNX batch size; it needs --onnx FILE",
        ));
    }
    let outputs = [
        (&a.onnx, Format::Onnx, "--onnx"),
        (&a.safetensors, Format::SafeTensors, "--safetensors"),
    ];
    for (path, want, flag) in outputs {
        let Some(path) = path else { continue };
        check_out(path, &[&a.model.model])?;
        if Format::for_output(path)? != want {
            return Err(bad(format!(
                "{flag} {}: the extension names another format; use .{}",
                path.display(),
                if want == Format::Onnx {
                    "onnx"
                } else {
                    "safetensors"
                }
            )));
        }
    }
    let model = open_model(&a.model)?;
    let mut written = Vec::new();
    if let Some(path) = &a.onnx {
        let mut opts = OnnxExportOptions::new().with_metadata(runtime_metadata(&model));
        if let Some(b) = a.batch {
            opts = opts.with_batch(b);
        }
        export_onnx(path, &model.graph, &model.weights, &opts)
            .with_context(|| format!("exporting {} to ONNX", a.model.model.display()))?;
        written.push(json!({"format": "onnx", "path": path, "batch": a.batch}));
    }
    if let Some(path) = &a.safetensors {
        save_model(path, &model)?;
        written.push(json!({"format": "safetensors", "path": path}));
    }
    if a.json {
        print_json(&json!({
            "model": a.model.model,
            "arch": model.arch.map(|x| x.to_string()),
            "params": model.graph.n_params(),
            "macs": model.graph.macs(),
            "written": written,
        }));
        return Ok(());
    }
    println!(
        "{}: {} parameters, {} MACs per image",
        a.model.model.display(),
        thousands(model.graph.n_params()),
        thousands(model.graph.macs())
    );
    if let Some(p) = &a.onnx {
        let batch = a
            .batch
            .map_or("symbolic batch N".to_string(), |b| format!("batch {b}"));
        println!("wrote {} (ONNX, {batch})", p.display());
    }
    if let Some(p) = &a.safetensors {
        println!(
            "wrote {} (self-describing safetensors; reloads with no --arch)",
            p.display()
        );
    }
    Ok(())
}
