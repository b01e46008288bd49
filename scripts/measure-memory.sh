#!/usr/bin/env bash
# Peak RSS (/usr/bin/time -v) on random-weight checkpoints, for docs/memory.md and for calibrating
# `internvl info`'s memory estimate. For each shape and precision, up to three runs:
#   convert  `internvl convert` into an empty graph cache (the conversion alone)
#   first    `internvl chat` with an empty graph cache: converts, loads, then answers (the estimate's `converting`)
#   cached   `internvl chat` again, loading the cached graphs (the estimate's `running`)
# chat: one image (examples/data/images/stripes.jpg, --max-tiles 1), 8 new tokens.
# Usage: scripts/measure-memory.sh WORKDIR [SHAPE ...]   (default shapes InternVL2_5-1B InternVL2_5-2B)
# Env: PRECISIONS (default "fp32 int4"; int4 = --llm-dtype int4 --prefill-dtype int8),
#      RUNS (default "convert first cached"), INTERNVL (default "node bin/internvl.js"; run `npm run build` first).
# Needs 2 bytes per parameter of disk for each checkpoint, plus its graphs. Prints one TSV line per run.
set -euo pipefail
work=${1:?usage: scripts/measure-memory.sh WORKDIR [SHAPE ...]}
shift
shapes=("$@")
[ $# -eq 0 ] && shapes=(InternVL2_5-1B InternVL2_5-2B)
read -r -a internvl <<<"${INTERNVL:-node bin/internvl.js}"
read -r -a precisions <<<"${PRECISIONS:-fp32 int4}"
read -r -a runs <<<"${RUNS:-convert first cached}"
mkdir -p "$work"
printf 'shape\tprecision\trun\tpeak_rss_kib\telapsed\n'
for shape in "${shapes[@]}"; do
  dir="$work/random-$shape"
  [ -f "$dir/model.safetensors.index.json" ] || [ -f "$dir/model.safetensors" ] ||
    "${internvl[@]}" create-random --shape "$shape" --out "$dir" >&2
  for precision in "${precisions[@]}"; do
    flags=()
    [ "$precision" = int4 ] && flags=(--llm-dtype int4 --prefill-dtype int8)
    for run in "${runs[@]}"; do
      log="$work/$shape-$precision-$run.time"
      case $run in
        convert)
          rm -rf "$work/convert-cache"
          /usr/bin/time -v -o "$log" "${internvl[@]}" convert "$dir" "${flags[@]}" \
            --cache-dir "$work/convert-cache" >&2
          rm -rf "$work/convert-cache" ;;
        first | cached)
          [ "$run" = first ] && rm -rf "$work/cache-$shape-$precision"
          INTERNVL_CACHE="$work/cache-$shape-$precision" /usr/bin/time -v -o "$log" \
            "${internvl[@]}" chat "$dir" "${flags[@]}" --image examples/data/images/stripes.jpg --max-tiles 1 \
            --max-new-tokens 8 "Describe the image." >&2 ;;
        *) echo "unknown run $run (convert, first, cached)" >&2; exit 2 ;;
      esac
      rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
      elapsed=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log")
      printf '%s\t%s\t%s\t%s\t%s\n' "$shape" "$precision" "$run" "$rss" "$elapsed"
    done
  done
done
