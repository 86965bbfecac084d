#!/usr/bin/env bash
# GPU correctness checks and the timings recorded in BENCHMARKS.md, in one go on a CUDA machine.
#   OUT=results/bench bash benchmarks/gpu_validation.sh [train_epochs]
# Needs torch, triton, numpy, scipy, h5py, pandas, pyyaml, tqdm (no snakemake): it runs the package
# from src/.
set -uo pipefail
OUT=${OUT:-results/bench}
EPOCHS=${1:-15}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== Triton mixer tests on the GPU"
if python -c "import pytest" 2>/dev/null; then
  python -m pytest -q tests/ops 2>&1 | tail -3
else
  echo "pytest not installed here: skipped"
fi

echo "== flare launch on a real GPU"
python -m flare launch --gpus 1 --lock-dir /tmp/flare-locks -- models | head -2

echo "== training step of every model, paper Darcy setting (fp32 + TF32, batch 2, N = 7225)"
python benchmarks/bench_models.py --out "$OUT/models_darcy.csv" --backends reference,triton 2>&1 | tail -14

echo "== FLARE at 1M points, bf16, batch 1"
python benchmarks/bench_models.py --models flare --backends reference,triton --points 1048576 --batch 1 \
  --precision bf16 --reps 5 --out "$OUT/flare_1m.csv" 2>&1 | tail -4
python benchmarks/bench_models.py --models flare --backends reference,triton --points 1048576 --batch 1 \
  --precision bf16 --checkpointing --reps 5 --out "$OUT/flare_1m_ckpt.csv" 2>&1 | tail -4

echo "== Darcy with the full FNO recipe (421 grid -> 85 x 85, 1000 / 200 samples), FLARE paper settings"
mkdir -p /tmp/darcy
start=$(date +%s)
python -m flare data generate-darcy --out /tmp/darcy/piececonst_r421_N1000_smooth1.mat --resolution 421 \
  --samples 1000 --seed 1 --workers "$(nproc)" --no-progress
python -m flare data generate-darcy --out /tmp/darcy/piececonst_r421_N200_smooth2.mat --resolution 421 \
  --samples 200 --seed 2 --workers "$(nproc)" --no-progress
echo "generation: $(( $(date +%s) - start )) s on $(nproc) cores"
python -m flare data prepare-darcy --train /tmp/darcy/piececonst_r421_N1000_smooth1.mat \
  --test /tmp/darcy/piececonst_r421_N200_smooth2.mat --out /tmp/darcy/dataset --subsample 5
python -m flare train --data-dir /tmp/darcy/dataset --model flare --seed 0 --out /tmp/darcy/run \
  --epochs "$EPOCHS" --no-progress
cp /tmp/darcy/run/history.csv "$OUT/darcy_gpu_history.csv"
cp /tmp/darcy/run/model_stats.json "$OUT/darcy_gpu_model_stats.json"
cat /tmp/darcy/run/model_stats.json
