#!/usr/bin/env bash
# Runs every baseline config of configs/baselines on the shipped demo data, then one report of all runs.
# Usage: bash scripts/run_baselines.sh [RUNS_DIR] [REPORT_DIR]   (about 6 min per run on 2 CPU cores)
set -euo pipefail
runs="${1:-runs/baselines}"
report="${2:-docs/baselines-report}"
for name in frozen full_finetune lora adaptformer earth_adapter all_on gated_fisher gated_random gated_gradnorm; do
  crossearth-gate fit --config "configs/baselines/$name.yaml" --out "$runs/$name" train.progress=false
done
crossearth-gate report "$runs"/* --out "$report"
