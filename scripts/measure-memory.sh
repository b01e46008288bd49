#!/usr/bin/env bash
# Peak RSS of `npx internvl chat` on random-weight checkpoints, for calibrating `internvl info`'s
# memory estimate (docs/memory.md). For each shape: the first run at a precision converts the
# checkpoint into the graph cache (the peak), the second loads the cached graphs. One image
# (examples/data/images/stripes.jpg, --max-tiles 1), 8 new tokens.
# Usage: scripts/measure-memory.sh WORKDIR [SHAPE ...]   (default shapes InternVL2_5-1B InternVL2_5-2B)
# Needs 2 bytes per parameter of disk for each checkpoint, plus its graphs. Prints one TSV line per run.
set -euo pipefail
work=${1:?usage: scripts/measure-memory.sh WORKDIR [SHAPE ...]}
shift
shapes=("$@")
[ $# -eq 0 ] && shapes=(InternVL2_5-1B InternVL2_5-2B)
mkdir -p "$work"
printf 'shape\tprecision\trun\tpeak_rss_kib\telapsed\n'
for shape in "${shapes[@]}"; do
  dir="$work/random-$shape"
  [ -f "$dir/model.safetensors.index.json" ] || [ -f "$dir/model.safetensors" ] ||
    npx internvl create-random --shape "$shape" --out "$dir" >&2
  for precision in fp32 int4; do
    flags=()
    [ "$precision" = int4 ] && flags=(--llm-dtype int4 --prefill-dtype int8)
    for run in convert cached; do
      log="$work/$shape-$precision-$run.time"
      INTERNVL_CACHE="$work/cache-$shape" /usr/bin/time -v -o "$log" \
        npx internvl chat "$dir" "${flags[@]}" --image examples/data/images/stripes.jpg --max-tiles 1 \
        --max-new-tokens 8 "Describe the image." >&2
      rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
      elapsed=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log")
      printf '%s\t%s\t%s\t%s\t%s\n' "$shape" "$precision" "$run" "$rss" "$elapsed"
    done
  done
done
