#!/usr/bin/env bash
# The InfoMin question, measured on the built-in world: downstream accuracy against view strength.
#   CLIP: crop scale (how much of the image a view keeps) x colour jitter (applied to every image, hue +-0.3,
#         while the world's zero-shot classes are colour + shape names)
#   unsupervised SimCSE: dropout rate x lexical-edit strength (WordNet synonyms replacing a share of the words)
# Each command writes its runs, sweep.csv and report/index.html (metric-against-value figures) under --out.
set -euo pipefail
cd "$(dirname "$0")/.."
MMSSL=${MMSSL:-.venv/bin/mmssl}
$MMSSL sweep configs/clip_world.yaml \
    "objective.views.crop_scale=[0.2,1.0],[0.5,1.0],[0.9,1.0]" "objective.views.color_jitter=0.0,1.0" \
    objective.views.hue=0.3 train.max_steps=300 train.warmup_steps=20 train.save_every=0 train.eval_every=100 \
    --out runs/sweep_clip_views "$@"
$MMSSL sweep configs/simcse_unsup_world.yaml \
    "model.config.hidden_dropout_prob=0.0,0.1,0.3" \
    "objective.text_views=[],[{type: synonym, p: 0.2}],[{type: synonym, p: 0.5}]" \
    --out runs/sweep_simcse_views "$@"
