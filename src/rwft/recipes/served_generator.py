"""``rwft iterate --generator-url``: the served generator's sync, the trainer's LoRA adapter saved and hot-loaded
by an OpenAI-compatible server (vLLM's ``/v1/load_lora_adapter``), named by its weights' digest as
``rollout.served_adapters`` names the adapters ``rwft eval`` / ``collect`` play through a server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Served:
    """The served generator: an OpenAI-compatible policy whose model name is the last adapter loaded."""

    def __init__(self, config: Any, out: Path, learner) -> None:
        from rwft.rollout.http_policy import OpenAIPolicy
        from rwft.rollout.served_adapters import TIMEOUT_OPTION

        self.config, self.out, self.learner = config, out, learner
        self.policy = OpenAIPolicy(config.generator_url, config.served_model, config.api_key_env,
                                   config.max_new_tokens, config.request_timeout, timeout_option=TIMEOUT_OPTION)
        self.tag = f"rwft-{stable_tag(out)}"

    def load(self, step: int) -> None:
        """Save the trainer's adapter (at its sync ``step``) and make the server generate with it.

        The directory (``OUTPUT/adapters/step-N-DIGEST``) and the name the server knows it by carry a digest of
        the adapter's weights: a rerun after a kill, which may train other weights to the same step, never loads
        an adapter left under that step, and the server's caches keyed by the name (vLLM's prefix cache) never
        mix two adapters."""
        import shutil

        from rwft.rollout.http_policy import unload_lora_adapter
        from rwft.rollout.served_adapters import adapter_digest, load_adapter

        tmp = self.out / "adapters" / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.learner.model.save_pretrained(tmp)
        digest = adapter_digest(tmp)
        path = (self.out / "adapters" / f"step-{step}-{digest}").resolve()
        if path.exists():  # the same weights saved before (a resume reloads its last sync)
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
        name, old = f"{self.tag}-{step}-{digest}", self.policy.model
        load_adapter(self.config.generator_url, name, path, self.config.api_key_env,  # drops one left by a restart
                     self.config.request_timeout)
        self.policy.model = name
        if old not in (self.config.served_model, name):
            unload_lora_adapter(self.config.generator_url, old, self.config.api_key_env, self.config.request_timeout)


    def release(self) -> None:
        """Unload the last synced adapter when the run is done (a killed run leaves it: its resume loads it again);
        a failed unload is a warning, the finished run stands."""
        from rwft.rollout.served_adapters import release_policy

        if self.policy.model != self.config.served_model:
            self.policy.loaded_adapter = self.policy.model
            release_policy(self.policy)
            self.policy.model = self.config.served_model


def stable_tag(out: Path) -> str:
    import hashlib

    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
