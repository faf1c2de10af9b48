#!/usr/bin/env bash
# Depthwise layers of MobileNetV2 (and two MnasNet 5x5 ones) at 32x32 inputs: shears' old direct
# loops, its vectorised kernels (examples/dwconv_bench.rs) and ONNX Runtime (bench/ort_layer.py),
# 2 threads, batches 1 and 128. The two programs run alternately, ROUNDS times each, so that a
# change of machine load hits both; every line is one JSON object (raw results on stdout).
# Usage: bench/dwconv_compare.sh [ROUNDS] (run from the repository root; needs a release build
# of the example and bench/.venv or PYTHON pointing at a python with onnxruntime).
set -euo pipefail
rounds="${1:-2}"
py="${PYTHON:-bench/.venv/bin/python}"
bin=target/release/examples/dwconv_bench
for r in $(seq 1 "$rounds"); do
  echo "{\"round\": $r, \"date\": \"$(date -u +%FT%TZ)\", \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
  "$bin" 2 1 128
  "$py" bench/ort_layer.py --threads 2 --batch 1 128
done
