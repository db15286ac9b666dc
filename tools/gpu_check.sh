#!/usr/bin/env bash
# The GPU check (issue 10), sized for under 8 minutes on one H100:
#   1. one short seeded SOPHON run of each embedded setting (tiny-gpt2, cnn, unet-tiny) with one attack
#      and one seed, on CUDA and, at the same time, the same run on the CPU;
#   2. python -m sophon.bench at gpt2 size in bf16 (MFU) and fp32, and the small sizes in bf16;
#   3. tools/compare_runs.py: the CPU and CUDA numbers of the same runs side by side.
#
#   bash tools/gpu_check.sh [OUT_DIR]      (default results/gpu_check)
# Environment: PYTHON (default python3), DATA_ROOT (a folder with FashionMNIST/raw when the Debian
# package is absent), SOPHON_CACHE (the embedded text sets), CPU_THREADS (default: half the cores).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check}
PY=${PYTHON:-python3}
THREADS=${CPU_THREADS:-$(( $(nproc) / 2 ))}
mkdir -p "$OUT"
DATA=(); [ -n "${DATA_ROOT:-}" ] && DATA=(--data_root "$DATA_ROOT")
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

runs() {  # DEVICE: the three short runs, each timed
    local dev=$1 root="$OUT/$1"
    local common=(--device "$dev" --root "$root" --seeds 1 --precision fp32 "${DATA[@]}")
    for spec in \
        "text|classification/inverse_loss.py --arch tiny-gpt2 --total_loop 20 --test_iterval 10 --attacks sgd-momentum:5e-2" \
        "image|classification/inverse_loss.py --arch cnn --total_loop 20 --test_iterval 10 --attacks sgd:1e-2" \
        "diffusion|generation/denial_service_loss.py --arch unet-tiny --total_loop 10 --test_iterval 5 --attacks adam:1e-4:epochs=5"; do
        local name=${spec%%|*} cmd=${spec#*|}
        local start=$SECONDS
        # shellcheck disable=SC2086
        "$PY" $cmd "${common[@]}" > "$OUT/$dev-$name.log" 2>&1
        echo "$dev $name: exit $? in $(( SECONDS - start )) s"
    done
}

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
OMP_NUM_THREADS=$THREADS runs cpu > "$OUT/cpu-times.txt" &
CPU_JOB=$!
if [ "$CUDA" = 1 ]; then
    runs cuda | tee "$OUT/cuda-times.txt"
    for args in "--size gpt2 --precision bf16 --bs 16 --seq 1024 --iters 5" \
                "--size gpt2 --precision fp32 --bs 16 --seq 1024 --iters 3" \
                "--size tiny-gpt2 --precision bf16" "--size cnn --precision bf16" "--size unet-tiny --precision bf16"; do
        echo "== python -m sophon.bench $args"
        # shellcheck disable=SC2086
        "$PY" -m sophon.bench $args --json | tail -1
    done | tee "$OUT/bench.txt"
fi
wait $CPU_JOB
cat "$OUT/cpu-times.txt"
[ "$CUDA" = 1 ] && "$PY" tools/compare_runs.py "$OUT/cpu" "$OUT/cuda" | tee "$OUT/compare.md"
exit 0
