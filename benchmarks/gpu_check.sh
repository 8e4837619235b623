#!/usr/bin/env bash
# The CUDA checks and GPU measurements that CPU-only sessions leave open, as one prepared run
# for a session lent a GPU machine (about 10 minutes on an H200; nothing is downloaded: the
# machine's own python3 with PyTorch runs the package from src/).
#
#   bash benchmarks/gpu_check.sh [STEP...]     # steps: tests merge stream precision train
#
# Each step's log goes to $OUT (the device tool's folder) or /tmp/gpu-check, and a step that
# fails or runs out of time does not stop the next one.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

step() {  # NAME SECONDS COMMAND...
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*"
    timeout "$seconds" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

run() {
    case $1 in
    tests)  # every CUDA test: parity, the device merges, the deformable-attention kernels
        step tests 240 "$python" -m pytest -q -x tests/test_cuda.py tests/test_torch_merge.py \
            tests/test_ms_deform_attn.py tests/test_ms_deform_attn_backward.py \
            tests/test_dinov3_pipeline.py ;;
    merge)  # the merge alone on the device (target: a 4000x3000 photo under 1 s)
        step merge 120 "$python" benchmarks/merge.py --device cuda --scores peaked uniform ;;
    stream)  # photos in a stream, bf16 (target: >= 85 % of the wall time in the crop forward)
        step stream-seed 150 "$python" benchmarks/end_to_end.py --stream --models seed \
            --device cuda --precision bf16 --photos 12 --size 640x480
        step stream-512 120 "$python" benchmarks/end_to_end.py --stream --models seed \
            --device cuda --precision bf16 --photos 12 --size 512x512 \
            --preset cocostuff10k-beit-adapter-l-m2f-512
        step stream-12mp 150 "$python" benchmarks/end_to_end.py --stream --models seed \
            --device cuda --precision bf16 --photos 3 --size 4000x3000 ;;
    precision)  # label agreement of bf16 / fp16 with fp32 on the full-size model
        step precision 180 "$python" benchmarks/precision.py --device cuda \
            --modes fp32 bf16 fp16 ;;
    train)  # one full-size training step, fp32 and bf16: seconds and peak memory
        step train-fp32 120 "$python" benchmarks/train_step.py --device cuda \
            --model cocostuff164k-beit-adapter-l-m2f-896 --iters 3
        step train-bf16 120 "$python" benchmarks/train_step.py --device cuda \
            --model cocostuff164k-beit-adapter-l-m2f-896 --iters 3 --bf16 ;;
    *) echo "unknown step: $1" >&2 ;;
    esac
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
for name in "${@:-tests merge stream precision train}"; do
    for one in $name; do run "$one"; done
done
