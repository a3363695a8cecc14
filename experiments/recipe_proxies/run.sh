#!/usr/bin/env bash
# Recipe proxies of issue #15: short FourM runs (1200 steps of the bundled stage-1 recipe, about an
# hour each on 2 cores) that report tok_rgb validation loss, caption -> rgb object F1 (`fourm eval`,
# 64 scenes of seed 1000) and the hidden-token cross-entropy (benchmarks/token_infill.py).
#   P0 the present recipe and tokens   configs/fm/shapes_bundled.yaml
#   P1 tok_rgb from rgb_gen            experiments/recipe_proxies/p1_gen_tokens.yaml
#   P2 P1 + the cond2rgb component     experiments/recipe_proxies/p2_gen_cond2rgb.yaml
#   P6 P1 + the rgb_infill component   experiments/recipe_proxies/p6_infill.yaml (MaskGIT's task)
#   P7 P1 + conditional infill         experiments/recipe_proxies/p7_cond_infill.yaml (the condition whole
#                                      + a share of tok_rgb in, the rest out; 128 encoder slots)
#   P3 P1 with RGB_GEN set to the flat tokenizer proxy L (experiments/tokenizer_proxies) and OUT elsewhere
# Needs the rgb_gen tokenizer: fourm tokenizer train configs/tokenizers/rgb_gen_64.yaml (RGB_GEN below).
#   bash experiments/recipe_proxies/run.sh P1 P2
# TRAIN_ARGS adds overrides to every run, e.g. TRAIN_ARGS="threads=1" for two runs side by side.
set -eu
cd "$(dirname "$0")/../.."
export OMP_WAIT_POLICY=PASSIVE
FOURM=${FOURM:-.venv/bin/fourm}
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-1200}
OUT=${OUT:-out/recipe_proxies}
RGB_GEN=${RGB_GEN:-out/tokenizers/rgb_gen_64/tokenizer}
SET=$OUT/tokenizers   # tokenizers/shapes64 plus rgb_gen/
mkdir -p "$OUT"

if [ ! -d "$SET/rgb_gen" ]; then
  mkdir -p "$SET" && cp -r tokenizers/shapes64/. "$SET/" && cp -r "$RGB_GEN" "$SET/rgb_gen"
fi
[ -d data/shapes/train ] || "$FOURM" data shapes --out data/shapes/train --num-samples 40000 --seed 0 --workers 2
[ -d data/shapes/val ] || "$FOURM" data shapes --out data/shapes/val --num-samples 1024 --seed 1
case " $* " in *" P0 "*) need_p0=1 ;; *) need_p0= ;; esac  # only P0 reads the bundled tokens
for split in train val; do
  [ -z "$need_p0" ] || [ -d data/shapes_tok/$split ] || "$FOURM" tokenize --input data/shapes/$split --output data/shapes_tok/$split \
      --tokenizers tokenizers/shapes64 --keep rgb --no-progress
  [ -d data/shapes_tok_gen/$split ] || "$FOURM" tokenize --input data/shapes/$split --output data/shapes_tok_gen/$split \
      --tokenizers "$SET" --config experiments/recipe_proxies/p1_gen_tokens.yaml --keep rgb --no-progress
done

config_of() { case $1 in P0) echo configs/fm/shapes_bundled.yaml ;; P1) echo experiments/recipe_proxies/p1_gen_tokens.yaml ;;
                          P2) echo experiments/recipe_proxies/p2_gen_cond2rgb.yaml ;;
                          P6) echo experiments/recipe_proxies/p6_infill.yaml ;;
                          P7) echo experiments/recipe_proxies/p7_cond_infill.yaml ;; *) echo "unknown proxy $1" >&2; exit 2 ;; esac; }
for name in "$@"; do
  dir=$OUT/$name
  [ -f "$dir/model/config.json" ] || "$FOURM" train "$(config_of "$name")" "out_dir=$dir" "steps=$STEPS" \
      checkpoint.every=400 checkpoint.keep_last=3 logging.progress=false ${TRAIN_ARGS:-} --resume auto > "$OUT/$name.log" 2>&1
  [ -f "$dir/eval.json" ] || "$FOURM" eval --model "$dir/model" --tokenizers "$SET" --num-samples 64 --seed 1000 \
      --json "$dir/eval.json" > "$dir/eval.txt" 2>&1
  [ -f "$dir/infill.json" ] || "$PY" benchmarks/token_infill.py "$dir/model" --tokenizers "$SET" \
      --json "$dir/infill.json" > "$dir/infill.txt" 2>&1
done
