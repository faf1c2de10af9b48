//! The `shears` command line.
//!
//! Each subcommand turns its arguments into a validated library configuration, calls the
//! `shears` library and renders the result for people (tables on stdout, progress on stderr) or,
//! with `--json`, as exactly one JSON object on stdout. Exit code 0 on success, 2 on bad input
//! (with a message naming the file, tensor or value at fault), 1 on other failures.

mod analyze_lsa_cmd;
mod analyze_merge_cmd;
mod analyze_sbpf_cmd;
mod analyze_sweep_cmd;
mod args;
mod bench_engine;
mod bench_onnx;
mod commands;
mod demo_cmd;
mod export_cmd;
mod output;
mod profile_out;
mod prune_cmd;
mod prune_latency;
mod recover_cmd;
mod run_cmd;
mod runtime_opts;
mod shard_cmd;
mod shard_opts;
mod train_sparse;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(commands::exit_code(&e))
        }
    }
}
