#!/usr/bin/env bash
# The searches behind docs/selection.md, on one GPU: a space on the phantom and on the real-anatomy benchmark (both
# paired), then every metric's agreement with the truth over their trials.
#   bash docs/selection/run_searches.sh RUNS_DIR SEED SECONDS_PER_SEARCH ANATOMY_SOURCE [SPACE [DATA ...]]
# ANATOMY_SOURCE is a folder of real slices (T1/, T2/), e.g. the study's; the benchmark is built from it first
# (RUNS_DIR/anatomy). DATA: synthetic and/or anatomy (default both). Each search's log is RUNS_DIR/NAME.log.
# SEARCH_FLAGS (environment) go to every search.run, e.g. "--gpus-per-trial 0.0625 --max-concurrent 16".
set -uo pipefail
runs=$1 seed=$2 budget=$3 source=$4 space=${5:-docs/selection/probe.yaml}
shift $(( $# < 5 ? $# : 5 ))
sets=("${@:-synthetic anatomy}")
mkdir -p "$runs"
[[ -d "$runs/anatomy" ]] || python -m cyclegan.phantom --from "$source" --out "$runs/anatomy" --seed 0 || exit 2
# Trials share the GPU: CUDA MPS lets their kernels run side by side (README, "Sharing GPUs").
nvidia-cuda-mps-control -d 2>/dev/null || true
names=()
for data in ${sets[*]}; do
  path=$([[ $data == synthetic ]] && echo synthetic || echo "$runs/$data")
  name="$(basename "$space" .yaml)_${data}_s$seed"
  names+=("$runs/$name")
  # The time budget stops the trials; the margin covers Ray's start, the final re-score and the export.
  timeout $(( ${budget%.*} + 240 )) python -m search.run "$space" --data "$path" --storage "$runs" --name "$name" \
    --time-budget "$budget" --set seed="$seed" ${SEARCH_FLAGS:-} > "$runs/$name.log" 2>&1
  echo "$name: exit $?"; grep -E "^[0-9]+ trials|^winner|^error" "$runs/$name.log"
done
python -m search.agreement "${names[@]}" --space spaces/full.yaml --combine --markdown "$runs/agreement_s$seed.md"
