# The end of a search on a cluster whose head has no GPU: the driver (CUDA hidden, 4 cores, as cluster.yaml's
# m5.xlarge head) beside a Ray node with the GPU. New code (finalists scored in actors on the GPU), then the old
# code at OLD (a checkout of 3ea245a, before the change). Run from the project root on a machine of its own:
# `ray stop --force` ends every Ray process there. LOCAL=1 (no GPU bundle, no nvidia-smi) for a CPU dry run.
set -u
ROOT=$PWD
[[ -z "${LOCAL:-}" ]] && source .gpu/setup.sh && nvidia-smi -L
CORES=${CORES:-12-15} VOLS=${VOLS:-12} SPACE=${SPACE:-$ROOT/.gpu/space-end.yaml} NCPU=${NCPU:-12}
SITE=${SITE:-/tmp/site}
command -v ray > /dev/null || ray() { python -c 'import sys; from ray.scripts.scripts import main; sys.argv[0] = "ray"; main()' "$@"; }
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c "import secrets; print(secrets.token_hex(32))")
DATA=${DATA:-/tmp/real} RUNS=${RUNS:-/tmp/runs}
rm -rf $DATA $RUNS
python -c "from pathlib import Path; from cyclegan.phantom import write_volumes; write_volumes(Path('$DATA'), $VOLS, 150, 256)"
du -sh $DATA
for v in new old; do
  dir=$ROOT; [ $v = old ] && dir=$(cd "${OLD:-$ROOT/.gpu/old}" && pwd)   # absolute: PYTHONPATH names it
  cd $dir
  export PYTHONPATH=$SITE:$dir
  ray start --head --num-gpus=1 --num-cpus=$NCPU --disable-usage-stats --include-dashboard=false > $OUT/$v-ray-start.txt 2>&1
  start=$(date +%s.%N)
  CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=4 timeout 420 taskset -c $CORES python -m search.run $SPACE \
      --data $DATA --storage $RUNS --name $v --address auto > $OUT/$v.txt 2>&1
  echo "$v rc=$? wall=$(python -c "import time; print(round(time.time()-$start,1))")"
  ray stop --force > /dev/null 2>&1
  cp $RUNS/$v/driver.json $OUT/$v-driver.json 2>/dev/null
  cp $RUNS/$v/summary/trials.csv $OUT/$v-trials.csv 2>/dev/null
  cp $RUNS/$v/best/samples.png $OUT/$v-samples.png 2>/dev/null
  python - "$OUT/$v-driver.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["sessions"][-1]
print({k: round(s[k], 2) if isinstance(s[k], float) and k.endswith("seconds") else s[k] for k in s
       if k.endswith("seconds") or k in ("rescored_on", "exit_code")})
print("tail (trials ended -> command ended):", round(s["ended"] - s["trials_ended"], 1), "s")
PY
  tail -5 $OUT/$v.txt
done
