//! `--shard I/N` and `--shards N`: which shard of a sharded analysis this process computes.

use anyhow::Result;
use clap::Args;
use shears::analyze::shard::{resolve, Shard, ShardChoice};

use crate::commands::bad;

/// Sharding flags of `analyze sweep`, `analyze sbpf` and `analyze lsa`.
#[derive(Args, Debug, Clone, Default)]
pub struct ShardOpts {
    /// Compute only shard I of N (0 <= I < N) of the probes, balanced by their estimated cost,
    /// into OUT/shard-IIII-of-NNNN/; `shears analyze merge OUT` combines the shards. Without
    /// it, a Slurm array task (SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT, or the array's
    /// MIN/MAX) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with --shards N) picks the
    /// shard; --shard 0/1 runs everything in one process even there.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// The number of shards (for JOB_COMPLETION_INDEX: the Indexed Job's completions); checked
    /// against --shard and a Slurm array when given with them.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
}

fn parse_shard(s: &str) -> std::result::Result<Shard, String> {
    s.parse::<Shard>().map_err(|e| e.to_string())
}

impl ShardOpts {
    /// The shard of this process (`None`: not sharded), from the flags or the environment.
    pub fn choice(&self) -> Result<Option<ShardChoice>> {
        let env = |k: &str| std::env::var(k).ok();
        resolve(self.shard, self.shards, &env).map_err(|e| bad(e.to_string()))
    }
}
