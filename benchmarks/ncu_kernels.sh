#!/usr/bin/env bash
# Nsight Compute metrics (duration, occupancy, issue utilisation, pipe use, warp stall reasons) of
# single launches of the step's Triton kernels, for reading where a kernel's time goes:
#   OUT=results/bench KERNELS="_gather_fwd_kernel _bwd_main_kernel" bash benchmarks/ncu_kernels.sh
# CASE=darcy (default): the paper Darcy training step (fp32 + TF32, eager); CASE=m256: the mixer alone,
# bf16, B=1, H=8, D=16, M=256, N=2^20, forward. Needs `ncu` (Nsight Compute) on PATH.
set -uo pipefail
OUT=${OUT:-results/bench}
CASE=${CASE:-darcy}
KERNELS=${KERNELS:-"_gather_fwd_kernel _scatter_fwd_kernel _bwd_scatter_kernel _bwd_main_kernel _mlp_fwd_kernel _mlp_bwd_kernel"}
mkdir -p "$OUT"
export FLARE_CONFIG_DIR=${FLARE_CONFIG_DIR:-config}
METRICS="gpu__time_duration.sum,launch__registers_per_thread,launch__grid_size,launch__occupancy_limit_registers,\
sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,\
sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,\
sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,\
sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,\
regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio"
case $CASE in
  darcy) CMD=(python benchmarks/bench_models.py --models flare --backends triton --modes eager --warmup 2 --reps 1
              --set mlp_backend=auto --out "$OUT/ncu_step.csv") ;;
  m256) CMD=(python benchmarks/bench_mixer.py --n-log2 20 --ms 256 --impls triton --modes fwd --warmup 5 --rep 5
             --csv "$OUT/ncu_mixer.csv") ;;
  *) echo "unknown CASE $CASE" >&2; exit 2 ;;
esac
for k in $KERNELS; do
  ncu --kernel-name "$k" --launch-skip 10 --launch-count 1 --metrics "$METRICS" --csv --page raw \
    "${CMD[@]}" > "$OUT/ncu_${CASE}_$k.csv" 2> "$OUT/ncu_${CASE}_$k.log"
  echo "== $k"
  python - "$OUT/ncu_${CASE}_$k.csv" <<'PY'
import csv, io, sys
lines = open(sys.argv[1]).read().splitlines()  # the benchmark's own output comes first
start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
rows = list(csv.reader(io.StringIO("\n".join(lines[start:])))) if start is not None else []
if len(rows) < 3:
    print("  no data"); sys.exit()
head, units, vals = rows[0], rows[1], rows[2]
print(f"  grid {vals[head.index('Grid Size')]} block {vals[head.index('Block Size')]}")
stalls = []
for h, u, v in zip(head, units, vals):
    if "issue_stalled" in h:
        try:
            stalls.append((float(v.replace(",", "")), h.split("stalled_")[1].split("_per")[0]))
        except ValueError:
            pass
    elif h.startswith(("gpu__time", "launch__registers", "launch__occupancy_limit", "launch__waves",
                       "launch__shared_mem_per_block ", "sm__", "smsp__")) and ".max" not in h and ".min" not in h:
        print(f"  {h:72s} {v} {u}")
print("  stalls (warps per issued instruction):",
      ", ".join(f"{n} {v:.2f}" for v, n in sorted(stalls, reverse=True)[:8]))
PY
done
