#!/usr/bin/env bash
# ./run_train.sh --config configs/train_config.yaml [--resume PATH|latest] [--set training.learning_rate=5e-5]
# Extra: T2ILAB_NUM_PROCESSES=N runs it under `accelerate launch --num_processes N`.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || make install >&2
if [ "${T2ILAB_NUM_PROCESSES:-1}" -gt 1 ]; then
  exec .venv/bin/accelerate launch --num_processes "$T2ILAB_NUM_PROCESSES" -m t2ilab train "$@"
fi
exec .venv/bin/python -m t2ilab train "$@"
