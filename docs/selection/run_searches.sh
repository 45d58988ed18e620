#!/usr/bin/env bash
# The searches behind docs/selection.md, on one GPU: the probe space on the phantom and on the real-anatomy benchmark
# (both paired), then the agreement of every metric with the truth over their trials.
#   bash docs/selection/run_searches.sh RUNS_DIR SEED SECONDS_PER_SEARCH ANATOMY_SOURCE [SPACE]
# ANATOMY_SOURCE is a folder of real slices (T1/, T2/), e.g. the study's; the benchmark is built from it first.
set -euo pipefail
runs=$1 seed=$2 budget=$3 source=$4 space=${5:-docs/selection/probe.yaml}
mkdir -p "$runs"
[[ -d "$runs/anatomy" ]] || python -m cyclegan.phantom --from "$source" --out "$runs/anatomy" --seed "$seed"
# Trials share the GPU: CUDA MPS lets their kernels run side by side (README, "Sharing GPUs").
nvidia-cuda-mps-control -d 2>/dev/null || true
for data in synthetic anatomy; do
  path=$([[ $data == synthetic ]] && echo synthetic || echo "$runs/anatomy")
  python -m search.run "$space" --data "$path" --storage "$runs" --name "${data}_s$seed" \
    --time-budget "$budget" --set seed="$seed" 2>&1 | grep -v "^(" | tail -n 25 || true
done
python -m search.agreement "$runs/synthetic_s$seed" "$runs/anatomy_s$seed" --space spaces/full.yaml \
  --combine --markdown "$runs/agreement_s$seed.md"
