"""Trained LoRA adapters played through an OpenAI-compatible server that loads them at run time (vLLM served with
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, as ``scripts/vllm_cpu.sh`` starts it).

``rwft collect`` / ``rwft eval --policy P --generator-url URL --served-model BASE`` (``make_run_policy``):

- ``P`` a LoRA adapter directory (it holds ``adapter_config.json``): the adapter is loaded into the server under
  ``rwft-adapter-DIGEST`` (``adapter_name``: a digest of its weights, so the server's caches keyed by the name,
  vLLM's prefix cache, never mix two adapters, and the same weights always get the same name) and played by
  that name;
- ``P`` the base model (``BASE`` itself, or the preset / directory / hub id the server reports having loaded; a
  server that does not say is trusted): played as ``BASE`` (pi_0 of ``rwft compare``);
- ``P`` any other full model directory (a merged or fully fine-tuned run): refused, as vLLM cannot load full
  weights at run time; scripted policies play locally as without a server.

An adapter this process loaded is unloaded when the evaluation or collection that played it is done, or failed
(``release_policy``); one the server already listed (another process playing the same weights) is played and left
loaded. Every request to the server has ``--request-timeout`` seconds, its retries included.

``rwft iterate --generator-url`` names its synced adapters with the same digest (``recipes.served_generator``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.http_policy import OpenAIPolicy, check_server, load_lora_adapter, model_list, unload_lora_adapter

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TIMEOUT_OPTION = "--request-timeout"

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ServedOptions:
    """The served-generator options of ``rwft collect`` and ``rwft eval``: a mixin of their configs (keyword-only,
    so it goes before their required fields)."""

    generator_url: str = ""
    """OpenAI-compatible server that plays --policy (vLLM with runtime LoRA loading: scripts/vllm_cpu.sh): a LoRA
    adapter directory is loaded into it under a name from its weights' digest; the base model plays as
    --served-model; a full model directory is refused. Empty: the policy runs in this process"""
    served_model: str = ""
    """with --generator-url: the name the server gives the base model (scripts/vllm_cpu.sh: smollm2)"""
    request_timeout: float = 120.0
    """seconds one request to the server that plays --policy (--generator-url, or an http(s):// --policy) may take,
    its retries included; a long prompt's prefill on a slow CPU server can need more. When it runs out the run stops
    with an error naming this option (the episodes of finished batches are kept: a rerun resumes)"""

    def check_served(self) -> None:
        """RwftError for a --request-timeout that is not a positive number of seconds."""
        check_request_timeout(self.request_timeout)


def check_request_timeout(seconds: float) -> None:
    """RwftError unless ``seconds`` (``--request-timeout``) is a positive, finite number."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise RwftError(f"{TIMEOUT_OPTION} {seconds}: expected a positive number of seconds")


def adapter_digest(directory: str | Path) -> str:
    """The first 8 hex digits of the SHA-256 of a saved adapter's weights (``adapter_model.safetensors``)."""
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise RwftError(f"{directory}: a LoRA adapter directory without {ADAPTER_WEIGHTS} (saved by an older PEFT, "
                        "or not finished saving)")
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:8]


def adapter_name(directory: str | Path, prefix: str = "rwft-adapter") -> str:
    """The name an adapter is loaded under: ``PREFIX-DIGEST``."""
    return f"{prefix}-{adapter_digest(directory)}"


def is_adapter(spec: str) -> bool:
    """Whether ``spec`` names a LoRA adapter directory (PEFT's ``adapter_config.json``)."""
    return (Path(spec).expanduser() / ADAPTER_CONFIG).is_file()


def load_adapter(base_url: str, name: str, path: str | Path, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0) -> None:
    """Load the adapter saved in ``path`` into the server under ``name``; a name loaded before (by a run before a
    restart) is dropped first, as vLLM refuses to load a name twice."""
    unload_lora_adapter(base_url, name, api_key_env, timeout)
    load_lora_adapter(base_url, name, str(Path(path).expanduser().resolve()), api_key_env, timeout)


def served_policy(spec: str, base_url: str, served_model: str, api_key_env: str = "OPENAI_API_KEY",
                  max_new_tokens: int = 256, timeout: float = 120.0) -> OpenAIPolicy:
    """The policy ``spec`` played by the server at ``base_url`` (see the module docstring), each request within
    ``timeout`` seconds; the server is asked first whether it serves ``served_model``, and an adapter is loaded
    before this returns (unless the server lists it already), to be unloaded by ``release_policy``."""

    def play(model: str) -> OpenAIPolicy:
        return OpenAIPolicy(base_url, model, api_key_env, max_new_tokens, timeout, timeout_option=TIMEOUT_OPTION)

    if not served_model:
        raise RwftError(f"--generator-url {base_url}: needs --served-model (the base model's name on the server)")
    if spec.startswith(("http://", "https://")):
        raise RwftError(f"--policy {spec} with --generator-url {base_url}: give the server once (--policy URL with "
                        "--api-model, or --generator-url with a LoRA adapter directory as --policy)")
    entry = check_server(base_url, served_model, api_key_env)
    path = Path(spec).expanduser()
    if is_adapter(spec):
        name = adapter_name(path)
        policy = play(name)
        if name in [m.get("id") for m in model_list(base_url, api_key_env)]:
            return policy  # loaded by another process playing the same weights: played, and left to it
        load_adapter(base_url, name, path, api_key_env, timeout)
        policy.loaded_adapter = name
        return policy
    match = is_served_base(spec, served_model, entry)
    if match:
        return play(served_model)
    if path.is_dir():
        raise RwftError(f"--policy {spec}: a full model directory (no {ADAPTER_CONFIG}), and --generator-url "
                        f"{base_url} loads only LoRA adapters at run time (vLLM cannot load full weights while "
                        "serving); train with --lora (unmerged), or serve this model itself and pass --policy "
                        "http://... --api-model NAME")
    if match is False:
        raise RwftError(f"--policy {spec}: --generator-url {base_url} serves {entry['root']} as --served-model "
                        f"{served_model}, not {spec}; serve {spec} there, or pass --policy {served_model}")
    return play(served_model)  # the server does not say: trusted


def is_served_base(spec: str, served_model: str, entry: dict[str, Any]) -> bool | None:
    """Whether ``spec`` (a preset, directory or hub id) is the model the server serves as ``served_model``: its name,
    or the path / id the server reports having loaded (vLLM's model list gives it as ``root``); None when the
    server does not say."""
    if spec == served_model:
        return True
    root = entry.get("root")
    if not isinstance(root, str) or not root:
        return None
    from rwft.presets import resolve_model

    return root == spec or os.path.realpath(root) == os.path.realpath(resolve_model(spec))


def make_run_policy(config: Any, env: Any) -> Any:
    """The policy of a ``rwft collect`` / ``rwft eval`` config (``policy``, ``max_new_tokens``, ``api_model``,
    ``api_key_env``, ``qsft_beta`` and ``ServedOptions``' fields): through ``--generator-url`` when one is given
    and the policy is not scripted, else as ``rollout.policies.make_policy`` builds it (an http(s):// one with
    ``--request-timeout`` too). Hand it to ``release_policy`` when done with it."""
    from rwft.rollout.policies import make_policy

    spec = config.policy
    if config.generator_url and not (spec == "scripted" or spec.startswith("scripted:")):
        return served_policy(spec, config.generator_url, config.served_model, config.api_key_env,
                             config.max_new_tokens, config.request_timeout)
    policy = make_policy(spec, env, config.max_new_tokens, config.api_model, config.api_key_env, config.qsft_beta)
    if isinstance(policy, OpenAIPolicy):
        policy.timeout, policy.timeout_option = config.request_timeout, TIMEOUT_OPTION
    return policy


def release_policy(policy: Any) -> None:
    """Unload the adapter ``served_policy`` loaded for ``policy`` (none for a policy that did not load one); the
    run that played it is done, so a failure is one logged warning, not an error."""
    name = getattr(policy, "loaded_adapter", None)
    if not name:
        return
    policy.loaded_adapter = None
    failure = unload_lora_adapter(policy.base_url, name, policy.api_key_env, policy.timeout)
    if failure:
        log.warning("rwft: could not unload adapter %s from %s (%s); it stays loaded there", name, policy.base_url,
                    failure)
