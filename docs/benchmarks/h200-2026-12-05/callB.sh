# Call B on one H200: issue 16's table side by side in one command (steps, the packed peak, two searches).
# Run from the project's root with the study's slices at .gpu/data/mri-t1t2 and $OUT set.
set -x
O=/tmp/o; mkdir -p $O
pack() { tar -czf $OUT/callB.tgz -C $O . ; }
source docs/benchmarks/h200-2026-12-04f/bytecode.sh
cat /tmp/compileall.txt | tail -2 > $O/bytecode.txt
nvidia-smi --query-gpu=name,driver_version --format=csv > $O/machine.txt
python -c "import torch, triton, ray; print(torch.__version__, triton.__version__, ray.__version__, torch.backends.cudnn.version())" >> $O/machine.txt
nvidia-cuda-mps-control -d
D=.gpu/data/mri-t1t2
python -m benchmarks.bench --sections steps processes --batches 2 32 --steps 30 --ref-best --processes 8 --duration 4 --out $O/steps.json > $O/steps.log 2>&1
P=$(python -c "import json; print(round(json.load(open('$O/steps.json'))['processes'][0]['pairs_per_s'], 1))")
echo "peak $P" >> $O/steps.log
pack
for r in a b; do
  nvidia-smi dmon -s u -o DT -d 2 > $O/$r-dmon.txt & DM=$!
  date +%s.%N > $O/$r-wall.txt
  python -m search.run spaces/full.yaml --data $D --storage /tmp/runs --name $r --max-concurrent 8 --gpus-per-trial auto --time-budget 188 > $O/$r-search.txt 2>&1
  date +%s.%N >> $O/$r-wall.txt
  kill $DM
  tail -30 $O/$r-search.txt > $O/$r-search-tail.txt; rm $O/$r-search.txt
  cp /tmp/runs/$r/driver.json $O/$r-driver.json
  python -m search.throughput /tmp/runs/$r --peak $P --dmon $O/$r-dmon.txt > $O/$r-tp.txt 2>&1
  python docs/benchmarks/h200-2026-12-05/warmups.py /tmp/runs/$r > $O/$r-warmups.txt 2>&1
  pack
done
