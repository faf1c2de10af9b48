#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine runs a ResNet-20 sensitivity sweep as a job
# array of 4 shards (`sbatch --array=0-3`, each shard read from SLURM_ARRAY_TASK_ID); the shards
# are merged with `shears analyze merge` and compared with the one-machine sweep of the same
# settings: sweep.json equal apart from timings and work counters, the CSV, the ratio files and
# the plots byte for byte.
#
# Needs root and Debian's packages (`apt-get install -y slurm-wlm munge`, done here when
# missing). munged, slurmctld and slurmd are started by this script with a private
# configuration (no systemd, no cgroups: proctrack/linuxproc, task/none) and stopped on exit.
# Exit 0: passed; 77: skipped (the reason on stderr, e.g. not root, packages unavailable);
# anything else: failed.
#
# Usage: tests/slurm/run.sh [SHEARS_BINARY]   (default: target/debug/shears, built if needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$(pwd)"
skip() { echo "Slurm test: SKIPPED ($*)" >&2; exit 77; }
fail() { echo "Slurm test: FAILED ($*)" >&2; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root to install and start slurm-wlm and munge"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if ! command -v apt-get >/dev/null; then skip "no apt-get to install slurm-wlm and munge"; fi
    echo "== installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } \
        || skip "apt-get install slurm-wlm munge failed (no network or no Debian archive)"
fi
command -v python3 >/dev/null || skip "no python3 for the JSON comparison"

SHARED="${SHEARS_SHARED:-$REPO/../shared}"
MODEL="$SHARED/models/resnet20.safetensors"
DATA="${SHEARS_DATA:-$SHARED/data}"
[ -f "$MODEL" ] || skip "no $MODEL"
[ -d "$DATA/cifar10" ] || [ -d "$DATA" ] || skip "no CIFAR-10 under $DATA"
BIN="${1:-$REPO/target/debug/shears}"
if [ ! -x "$BIN" ]; then
    echo "== building shears"
    cargo build -q -p shears-cli
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

WORK="$(mktemp -d /tmp/shears-slurm.XXXXXX)"
chmod 755 "$WORK"
cleanup() {
    # Only the daemons this script started, by their process ids; wait for them to exit.
    local pids=()
    for f in "$WORK"/slurmd.pid "$WORK"/slurmctld.pid "$WORK"/munged.pid; do
        if [ -s "$f" ]; then pids+=("$(cat "$f")"); fi
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 20); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.5
    done
    if [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---- munge, on a private socket ---------------------------------------------------------
mkdir -p "$WORK/munge"
chown munge:munge "$WORK/munge" 2>/dev/null || true
chmod 700 "$WORK/munge"
KEY=/etc/munge/munge.key
if [ ! -s "$KEY" ]; then
    mkdir -p /etc/munge
    (command -v mungekey >/dev/null && mungekey --create --keyfile="$KEY") \
        || dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
    chown munge:munge "$KEY" 2>/dev/null || true
    chmod 400 "$KEY"
fi
SOCK="$WORK/munge/munge.socket"
munged --force --socket="$SOCK" --key-file="$KEY" --pid-file="$WORK/munged.pid" \
    --log-file="$WORK/munged.log" --seed-file="$WORK/munge/seed" \
    || fail "munged did not start: $(cat "$WORK/munged.log" 2>/dev/null | tail -3)"

# ---- slurm.conf for this machine ----------------------------------------------------------
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p "$WORK/state" "$WORK/spool" "$WORK/out" "$WORK/logs"
export SLURM_CONF="$WORK/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=shears-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

echo "== starting slurmctld and slurmd ($HOST, $CPUS CPUs, $MEM_MB MB)"
slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start: $(tail -5 "$WORK/slurmctld.log")"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start: $(tail -5 "$WORK/slurmd.log")"
for _ in $(seq 1 60); do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)"
    case "$state" in idle*|mixed*|allocated*) break ;; esac
    sleep 1
done
case "$state" in
    idle*|mixed*|allocated*) echo "node $HOST is $state" ;;
    *) fail "the node did not come up (state '$state'): $(tail -5 "$WORK/slurmd.log")" ;;
esac

# ---- the sweep: 4 shards under sbatch, and one machine -----------------------------------
SWEEP=(analyze sweep "$MODEL" --arch resnet20 --data cifar10 --data-dir "$DATA"
       --images 200 --batch 100 --ratios 0.25,0.5,0.75
       --max-loss-increase 0.05 --speedup 1.25)
cat > "$WORK/shard.sbatch" <<JOB
#!/bin/bash
#SBATCH --job-name=shears-sweep
#SBATCH --array=0-3
#SBATCH --cpus-per-task=1
#SBATCH --output=$WORK/logs/shard-%a.out
#SBATCH --error=$WORK/logs/shard-%a.err
export RAYON_NUM_THREADS=1
exec "$BIN" $(printf '%q ' "${SWEEP[@]}") --out "$WORK/out/sharded"
JOB
echo "== sbatch --array=0-3"
JOB_ID="$(sbatch --parsable "$WORK/shard.sbatch")" || fail "sbatch refused the job"
JOB_ID="${JOB_ID%%;*}"
echo "job $JOB_ID submitted"
deadline=$((SECONDS + ${SLURM_TEST_TIMEOUT:-150}))
while [ -n "$(squeue -h -j "$JOB_ID" 2>/dev/null)" ]; do
    [ $SECONDS -lt $deadline ] || { scancel "$JOB_ID" || true; fail "job $JOB_ID still queued or running after the timeout"; }
    sleep 2
done
for i in 0 1 2 3; do
    st="$(scontrol show job "${JOB_ID}_$i" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1)"
    echo "task $i: ${st:-unknown}, $(grep -h '^sweep shard' "$WORK/logs/shard-$i.out" 2>/dev/null || true)"
    [ "$st" = COMPLETED ] || fail "array task $i ended $st: $(tail -5 "$WORK/logs/shard-$i.err" 2>/dev/null)"
    grep -q "source slurm: SLURM_ARRAY_TASK_ID=$i" "$WORK/logs/shard-$i.out" \
        || fail "task $i did not take its shard from SLURM_ARRAY_TASK_ID"
done

echo "== shears analyze merge"
"$BIN" analyze merge "$WORK/out/sharded" >"$WORK/logs/merge.out" || fail "merge failed: $(cat "$WORK/logs/merge.out")"
echo "== the one-machine sweep"
RAYON_NUM_THREADS=1 "$BIN" "${SWEEP[@]}" --out "$WORK/out/one" >"$WORK/logs/one.out" 2>&1 \
    || fail "the one-machine sweep failed: $(tail -5 "$WORK/logs/one.out")"

echo "== comparing"
python3 "$REPO/tests/slurm/compare.py" "$WORK/out/one" "$WORK/out/sharded" || fail "merged result differs"
echo "Slurm test: PASSED (4 array tasks under slurmctld/slurmd, merged == one machine)"
