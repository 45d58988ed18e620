# The driver's start, old code against new, one after the other, three times (2-core CPU, no GPU).
# OLD and NEW: checkouts (git worktree add OLD 6452cc6); DATA: the study's slices; OUT: where the runs go.
for i in 1 2 3; do
  for code in old new; do
    src=$([ $code = old ] && echo "$OLD" || echo "$NEW")
    s=$(date +%s.%N)
    (cd "$src" && PYTHONPATH="$src" OMP_NUM_THREADS=1 python -m search.run "$OUT/space.yaml" --data "$DATA" \
        --storage "$OUT/runs" --name $code$i > "$OUT/$code$i.out" 2>&1)
    rc=$? e=$(date +%s.%N)
    echo "$code$i rc=$rc wall=$(python -c "print(round($e - $s, 2))")"
    (cd "$NEW" && python -m search.throughput "$OUT/runs/$code$i" |
        grep -E "driver start-up|of the driver|beside Ray|first training step|command:")
  done
done
