#!/usr/bin/env bash
# `flare train` / `flare evaluate` on a CUDA machine: every registered model for one epoch on a small
# generated Darcy set (the CLI path end to end on a GPU), then FLARE with the paper settings on
# Darcy made with the full FNO recipe (421 grid -> 85 x 85, 1000 / 200 samples) for TRAIN_SECONDS;
# a SIGTERM at the end makes the trainer save its state, whose history is exported.
# SKIP_MODELS=1 skips the every-model part; WORKERS sets the generator's processes (default: all cores).
#   OUT=results/bench TRAIN_SECONDS=120 EPOCHS=3 bash benchmarks/gpu_train_check.sh
set -uo pipefail
OUT=${OUT:-results/bench}
TRAIN_SECONDS=${TRAIN_SECONDS:-120}
EPOCHS=${EPOCHS:-3}  # the one-cycle schedule spans these epochs
WORKERS=${WORKERS:-$(nproc)}
SKIP_MODELS=${SKIP_MODELS:-0}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
W=/tmp/flare-gpu
rm -rf "$W"; mkdir -p "$W"

if [ "$SKIP_MODELS" != 1 ]; then
echo "== every model, one epoch, paper settings, small Darcy (85 x 85, 32 / 8 samples)"
python -m flare data generate --dataset darcy --raw-dir "$W/raw" \
  --options '{"resolution": 85, "samples_per_file": 32}' --workers "$(nproc)"
python -m flare data prepare --dataset darcy --raw-dir "$W/raw" --out "$W/small" \
  --options '{"resolution": 85, "samples_per_file": 32, "subsample": 1, "num_train": 32, "num_test": 8}'
for model in $(python -m flare models); do
  python -m flare train --data-dir "$W/small" --model "$model" --seed 0 --out "$W/runs/$model" --epochs 1 \
    --no-progress > "$W/$model.log" 2>&1
  python - "$W/runs/$model" "$model" <<'PY'
import json, sys
from pathlib import Path
run, model = Path(sys.argv[1]), sys.argv[2]
try:
    stats = json.loads((run / "model_stats.json").read_text())
    ev = json.loads((run / "rel_error.json").read_text())
    print(f"{model:16s} ok  device={stats['device']} step={1e3 * stats['seconds_per_step']:.1f} ms "
          f"peak={stats['peak_memory_bytes'] / 2**30:.2f} GiB test_rel_l2={ev['test_rel_l2']:.3f}")
except Exception as err:
    print(f"{model:16s} FAILED ({err})")
PY
done | tee "$OUT/gpu_train_models.txt"
tail -n 3 "$W"/*.log | grep -i error || true
fi

echo "== FLARE, paper settings, Darcy from the full FNO recipe"
start=$(date +%s)
# the published layout: two files of 1024 samples; train on smooth1[:1000], test on smooth2[:200]
python -m flare data generate --dataset darcy --raw-dir "$W/fno" \
  --options '{"resolution": 421, "samples_per_file": 1024}' --workers "$WORKERS" 2> /dev/null
echo "generation: $(( $(date +%s) - start )) s with $WORKERS workers"
python -m flare data prepare --dataset darcy --raw-dir "$W/fno" --out "$W/darcy" \
  --options '{"resolution": 421, "samples_per_file": 1024, "subsample": 5, "num_train": 1000, "num_test": 200}'
timeout -s TERM "$TRAIN_SECONDS" python -m flare train --data-dir "$W/darcy" --model flare --seed 0 \
  --out "$W/paper" --epochs "$EPOCHS" --no-progress
python - "$W/paper" "$OUT" <<'PY'
import csv, json, sys
from pathlib import Path
import torch
run, out = Path(sys.argv[1]), Path(sys.argv[2])
state = torch.load(run / "latest.pt", map_location="cpu", weights_only=False)
rows = state["history"]
with open(out / "darcy_paper_history.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
for r in rows:
    print(f"epoch {r['epoch']:3d}  {r['seconds']:6.1f} s  train_rel_l2 {r['train_rel_l2']:.4f}  "
          f"test_rel_l2 {r['test_rel_l2']:.4f}  lr {r['learning_rate']:.2e}")
print("saved at epoch", state["epoch"], "step", state["step_in_epoch"])
PY
