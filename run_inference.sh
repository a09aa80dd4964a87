#!/usr/bin/env bash
# ./run_inference.sh --checkpoint ./outputs/checkpoint-epoch-118 --prompt "a red circle" [--num_inference_steps 100]
# Relative --checkpoint, --output and --prompts-file paths are read from the directory you call it from.
set -euo pipefail
export T2ILAB_CALLER_DIR="$PWD"
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || make install >&2
exec .venv/bin/python -m t2ilab sample "$@"
