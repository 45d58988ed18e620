# Call C on one H200 (another machine than call B): the GPU tests, the quality section, a third search.
# P is call B's packed peak: this call had no time left to measure its own.
set -x
O=/tmp/o; mkdir -p $O
pack() { tar -czf $OUT/callC.tgz -C $O . ; }
source docs/benchmarks/h200-2026-12-04f/bytecode.sh
nvidia-smi --query-gpu=name,driver_version --format=csv > $O/machine.txt
D=.gpu/data/mri-t1t2
timeout 200 python -m pytest -q -rs -p no:cacheprovider tests/cyclegan/test_bench.py::test_graphed_fit_equals_eager_fit_on_the_gpu tests/cyclegan/test_checkpoint_writer.py tests/cyclegan/test_compile_ahead.py tests/cyclegan/test_fused_norm.py tests/cyclegan/test_one_channel.py tests/cyclegan/test_unpaired.py::test_the_validation_pass_never_waits_for_the_gpu_and_replays_as_a_graph > $O/gpu-tests.txt 2>&1; echo "rc $?" >> $O/gpu-tests.txt
pack
python -m benchmarks.bench --sections quality --quality-variants fast fp32_eager --seeds 3 --out $O/quality.json > $O/quality.log 2>&1
pack
nvidia-cuda-mps-control -d
P=377.2
for r in c; do
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
