#!/usr/bin/env bash
# The same GPU benchmarks against a baseline copy of the package and the working tree, in one run on
# one machine (timings of different machines of the same type differ by a few per cent, so only
# same-run pairs count). Make the baseline from a commit first, e.g.
#   mkdir -p base && git archive HEAD src | tar -x -C base
# then on the GPU machine:
#   OUT=results/bench BASE=base/src PART=darcy,mixer,million bash benchmarks/gpu_ab.sh
# darcy: the paper Darcy training step (fp32 + TF32, CUDA graphs, fused MLPs; `flare train`'s default)
#   with its top kernels; mixer: the fused mixer alone at the Darcy size (TF32); million: the mixer at
#   N = 2^20, bf16, M = 64 and 256; step1m: the training step of the 1M-point model (bf16, H = 8,
#   eager). Rows are tagged base / new in the CSVs under $OUT.
set -uo pipefail
OUT=${OUT:-results/bench}
BASE=${BASE:-base/src}
PART=${PART:-darcy,mixer,million}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FLARE_CONFIG_DIR=${FLARE_CONFIG_DIR:-config}
[ -d "$BASE" ] || { echo "baseline package $BASE not found (see the header of $0)" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
# a cold GPU runs its first seconds at lower clocks: the first configuration measured would pay for it
python - <<'PY'
import time, torch
a = torch.randn(4096, 4096, device="cuda")
t0 = time.time()
while time.time() - t0 < 10:
    a @ a
torch.cuda.synchronize()
PY
quiet() { grep -v -i -e warn -e run_backward -e "^{" ; }
has() { [[ ",$PART," == *",$1,"* ]]; }
for tag in base new; do
  src=src; [ "$tag" = base ] && src=$BASE
  echo "=== $tag ($src)"
  if has darcy; then
    PYTHONPATH=$src python benchmarks/bench_models.py --models flare --backends triton --modes graphs \
      --profile "${PROFILE_TOP:-12}" --set mlp_backend=auto --out "$OUT/step_darcy_$tag.csv" 2>&1 | quiet
  fi
  if has mixer; then
    PYTHONPATH=$src python benchmarks/bench_mixer.py --paper-darcy --tf32 --impls triton --check \
      --csv "$OUT/mixer_darcy_$tag.csv" 2>&1 | quiet
  fi
  if has million; then
    PYTHONPATH=$src python benchmarks/bench_mixer.py --n-log2 20 --ms 64,256 --impls triton \
      --csv "$OUT/mixer_1m_$tag.csv" 2>&1 | quiet
  fi
  if has step1m; then
    PYTHONPATH=$src python benchmarks/bench_models.py --models flare --points 1048576 --batch 1 --precision bf16 \
      --warmup 3 --reps 5 --profile 8 --set num_heads=8 --backends triton --modes eager --set mlp_backend=auto \
      --out "$OUT/step_1m_$tag.csv" 2>&1 | quiet
  fi
done
