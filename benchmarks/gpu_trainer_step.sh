#!/usr/bin/env bash
# Time per step through `flare train` itself (data loading, loss, metrics, optimizer, schedule
# included) for FLARE at the paper's Darcy settings on a GPU: eager, CUDA graphs (the default) and
# torch.compile with its CUDA graphs; torch_adamw: graphs with torch's fused AdamW and clip_grad_norm_
# instead of flare.ops.fused_adamw. Small generated Darcy (85 x 85, NUM_TRAIN train samples, 64 by default, and 16 test).
#   OUT=results/bench EPOCHS=4 [VARIANTS=eager,graphs,compile,torch_adamw] [SRC=base/src] bash benchmarks/gpu_trainer_step.sh
set -uo pipefail
OUT=${OUT:-results/bench}
EPOCHS=${EPOCHS:-4}
NUM_TRAIN=${NUM_TRAIN:-64}
mkdir -p "$OUT"
export PYTHONPATH=${SRC:-src} PYTHONUNBUFFERED=1
W=/tmp/flare-trainer-step
rm -rf "$W"; mkdir -p "$W"
python -m flare data generate --dataset darcy --raw-dir "$W/raw" \
  --options "{\"resolution\": 85, \"samples_per_file\": $((NUM_TRAIN + 16))}" --workers "$(nproc)" > "$W/gen.log" 2>&1
python -m flare data prepare --dataset darcy --raw-dir "$W/raw" --out "$W/data" \
  --options "{\"resolution\": 85, \"samples_per_file\": $((NUM_TRAIN + 16)), \"subsample\": 1, \"num_train\": $NUM_TRAIN, \"num_test\": 16}" \
  > "$W/prep.log" 2>&1
VARIANTS=${VARIANTS:-eager,graphs,compile}
for variant in "eager:--set train.cuda_graphs=false" "graphs:--set train.cuda_graphs=true" \
               "compile:--set train.compile=true" \
               "torch_adamw:--set train.cuda_graphs=true --set train.fused_optimizer=false"; do
  name=${variant%%:*}; flags=${variant#*:}
  [[ ",$VARIANTS," == *",$name,"* ]] || continue
  python -m flare train --data-dir "$W/data" --model flare --seed 0 --out "$W/runs/$name" \
    --epochs "$EPOCHS" --no-progress $flags > "$W/$name.log" 2>&1 || { echo "$name failed"; tail -5 "$W/$name.log"; }
done
python - "$W/runs" "$OUT/trainer_step.csv" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
rows = []
for run in sorted(Path(sys.argv[1]).iterdir()):
    stats = json.loads((run / "model_stats.json").read_text())
    errors = json.loads((run / "rel_error.json").read_text())
    rows.append({"mode": run.name, "ms_per_step": 1e3 * stats["seconds_per_step"],
                 "seconds_per_epoch": stats["seconds_per_epoch"], **errors})
table = pd.DataFrame(rows)
table.to_csv(sys.argv[2], index=False)
print(table.to_markdown(index=False))
PY
