#!/usr/bin/env bash
# ./run_train.sh --config configs/train_config.yaml [--resume PATH|latest] [--set training.learning_rate=5e-5]
# Extra: T2ILAB_NUM_PROCESSES=N runs it under `accelerate launch --multi_gpu --num_processes N` (GPUs, or CPUs via gloo).
# Relative --config, --resume and --set output_dir= paths are read from the directory you call it from.
set -euo pipefail
export T2ILAB_CALLER_DIR="$PWD"
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || make install >&2
if [ "${T2ILAB_NUM_PROCESSES:-1}" -gt 1 ]; then
  exec .venv/bin/accelerate launch --multi_gpu --num_processes "$T2ILAB_NUM_PROCESSES" --num_machines 1 \
    --dynamo_backend no -m t2ilab train "$@"
fi
exec .venv/bin/python -m t2ilab train "$@"
