#!/usr/bin/env bash
# Run the ablation for several shots and seeds as DVC experiments in the workspace and keep a
# record of each (metrics, wall time) in OUT. Usage: scripts/seed_runs.sh OUT "1 5" "0 1 2" [-S key=value ...]
set -euo pipefail
out=$1; shots=$2; seeds=$3; shift 3
mkdir -p "$out"
for shot in $shots; do
  for seed in $seeds; do
    record="$out/k${shot}_s${seed}.json"
    [ -f "$record" ] && { echo "skip $record"; continue; }
    start=$(date +%s)
    dvc exp run -S "shot=$shot" -S "seed=$seed" "$@"
    end=$(date +%s)
    python - "$record" "$shot" "$seed" $((end - start)) <<'PY'
import json, sys
from pathlib import Path
from fsds.config import load_config
from fsds.io import write_json
from fsds.report import training_seconds
record, shot, seed, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = load_config("params.yaml")
write_json(record, {"shot": shot, "seed": seed, "wall_seconds": wall, "params": cfg.to_dict(),
                    "metrics": json.loads(Path("reports/metrics.json").read_text()),
                    "train_seconds": training_seconds("data/models", cfg.variants)})
PY
  done
done
