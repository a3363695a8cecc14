#!/usr/bin/env bash
# rgb tokenizer proxies for generation: configs/tokenizers/rgb_objects_64.yaml cut to 1000 steps x 32
# (about 17 min on 2 cores), one change each, then `fourm tokenizer eval` on 256 held-out scenes
# (seed 777) with the predictability table (1500 other scenes). Results: README.md beside this file.
#   bash experiments/tokenizer_proxies/run.sh "A_control" "H_no_dead_code tokenizer.quantizer.dead_code_threshold=0"
#   bash experiments/tokenizer_proxies/run.sh "L_flat_nodead tokenizer.quantizer.dead_code_threshold=0 tokenizer.normalize.flat=true"
#   bash experiments/tokenizer_proxies/run.sh "M_flat_local tokenizer.quantizer.dead_code_threshold=0 tokenizer.normalize.flat=true tokenizer.encoder.local=true"
#   bash experiments/tokenizer_proxies/run.sh "N_flat_local_dead tokenizer.normalize.flat=true tokenizer.encoder.local=true"
set -u
cd "$(dirname "$0")/../.."
export OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-out/tokenizer_proxies}
FOURM=${FOURM:-.venv/bin/fourm}
mkdir -p "$OUT"
run() {  # name [KEY=VALUE ...]
  name=$1; shift
  [ -f "$OUT/$name/eval.json" ] && return
  "$FOURM" tokenizer train configs/tokenizers/rgb_objects_64.yaml "out_dir=$OUT/$name" steps=1000 data.batch_size=32 \
     val.every=500 checkpoint.every=250 logging.every=20 "$@" --no-progress > "$OUT/$name.log" 2>&1 \
     || { echo "$name failed: $OUT/$name.log"; return; }
  mkdir -p "$OUT/$name/eval/rgb" && cp "$OUT/$name/tokenizer/"* "$OUT/$name/eval/rgb/"
  "$FOURM" tokenizer eval --tokenizers "$OUT/$name/eval" --seed 777 --num-samples 256 --predictability-samples 1500 \
     --json "$OUT/$name/eval.json" > "$OUT/$name/eval.txt" 2>&1
}
for spec in "$@"; do
  eval "run $spec"
done
