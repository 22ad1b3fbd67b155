#!/bin/sh
# The cells of docs/experiments.md: `eval --n N` of RUN with each sampler × steps × spacing given as
# "sampler steps [flags…]" lines on stdin, one JSON line each appended to OUT (with the wall time).
#   printf 'dpm-solver++ 20\nddim 50\n' | sh benchmarks/eval_cells.sh runs/A 1000 runs/evals.jsonl
set -e
run=$1 n=$2 out=$3
while read -r sampler steps flags; do
  [ -z "$sampler" ] && continue
  start=$(date +%s)
  # shellcheck disable=SC2086
  line=$(nice -n 10 python -m minidiff eval "$run" --n "$n" --sampler "$sampler" --steps "$steps" $flags)
  echo "$line" | python -c "import json, sys; r = json.load(sys.stdin); r.update(run='$run', flags='$flags', wall_s=$(date +%s) - $start); print(json.dumps(r))" >> "$out"
  tail -n 1 "$out"
done
