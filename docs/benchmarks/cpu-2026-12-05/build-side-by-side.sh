# A trial's data set built by old code and new, one fresh process each (2-core CPU, no GPU).
# OLD and NEW: checkouts (git worktree add OLD 896ca24); DATA: a folder of T1/ and T2/ (see the section in
# docs/benchmarks.md for the one used: `python -c "from cyclegan.phantom import write_volumes; ..."`).
here=$(cd "$(dirname "$0")" && pwd)
for threads in 1 2; do
  for resize in 128 256; do
    for code in old new; do
      src=$([ $code = old ] && echo "$OLD" || echo "$NEW")
      echo -n "$code "
      (cd "$src" && PYTHONPATH="$src" OMP_NUM_THREADS=$threads python "$here/build_dataset.py" "$DATA" $resize)
    done
  done
done
