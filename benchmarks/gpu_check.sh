#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run, on one CUDA GPU, sized for a short lease
# (about 6 minutes on an H100-class GPU): the step's cost on ResNet-18 (32x32, batch 128) and
# ResNet-50 (224x224, batch 64) under the default schedule, ResNet-18 under the paper's schedule,
# and, where Ray is installed, two shards and the learner sharing the GPU. Writes at most eight
# files (JSON figures, one log) into OUT_DIR.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default: benchmarks/results/gpu)
#
# Needs torch, torchvision, torch-pruning and pyyaml importable by $PYTHON (default python3); the
# repository's root goes on PYTHONPATH, so nothing needs installing. docs/performance.md says how to carry torch-pruning to a
# machine without a package index.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
log="$out/gpu_check.log"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

run() {  # name, then the command; a failed figure is logged and the others still run
    local name=$1; shift
    echo "== $name: $*" | tee -a "$log"
    "$@" 2>&1 | grep -v "Warning" | tee -a "$log" || { echo "== $name FAILED" | tee -a "$log"; status=1; }
}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c "import torch, torchvision, torch_pruning; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'torch-pruning', torch_pruning.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$log"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device: nothing to measure" | tee -a "$log"; exit 1; }

run resnet18 "$py" benchmarks/step_overhead.py --model resnet18 --no-memory \
    --json "$out/step_overhead_gpu_resnet18_32.json"
run resnet50 "$py" benchmarks/step_overhead.py --model resnet50 --image-size 224 --batch 64 --no-memory \
    --json "$out/step_overhead_gpu_resnet50_224.json"
run resnet18_paper "$py" benchmarks/step_overhead.py --model resnet18 --train-while-searching best --no-memory \
    --json "$out/step_overhead_gpu_resnet18_32_paper_schedule.json"
if "$py" -c "import ray" 2>/dev/null; then
    run distributed "$py" benchmarks/distributed_step.py --device cuda --json "$out/distributed_step_gpu.json"
else
    echo "== distributed: skipped, Ray is not installed here" | tee -a "$log"
fi
exit $status
