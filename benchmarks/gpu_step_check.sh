#!/usr/bin/env bash
# How FLARE's training step is run on a GPU: eager, CUDA graphs, torch.compile, compile + its CUDA
# graphs; the reference mixer with nn.Linear MLPs against the fused mixer with nn.Linear MLPs and with
# the fused MLP kernels, side by side in one run; the top kernels of each. Paper Darcy setting
# (fp32 + TF32, batch 2, N = 7225) and 1M points (bf16, batch 1). Also the GPU tests of the fused
# mixer, the fused MLP and graphed / compiled training. The 1M-point model is the paper's Darcy FLARE
# with H = 8 heads (D = 8), as in the kernel issue's measurements; MILLION_SET replaces that setting.
#   OUT=results/bench PART=darcy|million|tests|mlp|all bash benchmarks/gpu_step_check.sh
set -uo pipefail
OUT=${OUT:-results/bench}
PART=${PART:-all}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
quiet() { grep -v -i -e warn -e run_backward -e "^{" ; }
if [ "$PART" = tests ] || [ "$PART" = all ]; then
  python -m pytest -q tests/ops/test_triton_mixer.py tests/ops/test_fused_mlp.py tests/ops/test_mixer_backends.py \
    tests/train/test_graphs.py 2>&1 | tail -5
fi
if [ "$PART" = mlp ] || [ "$PART" = all ]; then
  python benchmarks/bench_mlp.py --impls "${MLP_IMPLS:-torch,compiled,fused}" --profile 4 --out "$OUT/mlp.csv" 2>&1 | quiet
fi
if [ "$PART" = darcy ] || [ "$PART" = all ]; then
  modes=${DARCY_MODES:-graphs,compile-graphs}
  python benchmarks/bench_models.py --models flare --backends reference,triton --modes "$modes" --profile 10 \
    --set mlp_backend=torch --out "$OUT/step_darcy_mlp_torch.csv" 2>&1 | quiet
  python benchmarks/bench_models.py --models flare --backends triton --modes "$modes" --profile 10 \
    --set mlp_backend=auto --out "$OUT/step_darcy_mlp_fused.csv" 2>&1 | quiet
fi
if [ "$PART" = million ] || [ "$PART" = all ]; then
  common=(--models flare --points 1048576 --batch 1 --precision bf16 --warmup 3 --reps 5 --profile 12
          --set "${MILLION_SET:-num_heads=8}")
  python benchmarks/bench_models.py "${common[@]}" --backends reference --modes eager --set mlp_backend=torch \
    --out "$OUT/step_1m_reference.csv" 2>&1 | quiet
  python benchmarks/bench_models.py "${common[@]}" --backends triton --modes "${MILLION_MODES:-eager,compile}" \
    --set mlp_backend=torch --out "$OUT/step_1m_mlp_torch.csv" 2>&1 | quiet
  python benchmarks/bench_models.py "${common[@]}" --backends triton --modes "${MILLION_MODES:-eager,compile}" \
    --set mlp_backend=auto --out "$OUT/step_1m_mlp_fused.csv" 2>&1 | quiet
fi
