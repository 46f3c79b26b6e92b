"""A Hugging Face causal LM as a policy: batched, seeded generation that continues from the KV cache.

``HFPolicy.act(episodes, temperatures, seeds)`` answers a batch at once with one left-padded ``generate``
call, continuing from the KV cache of the episodes' previous turn. Sampling is done by a logits processor
that draws each row's token with uniforms from that row's own ``torch.Generator`` (temperature 0 =
greedy), so row i gets the same tokens alone or in a batch in fp32 on a CPU (tested). In bf16 on a GPU, a
row's logits change in the last bits with the batch's shape, so sampled texts can part ways after a few
tokens: the episodes are equally distributed, not equal.

``HFPolicy(spec)`` loads a preset, model directory or hub id; ``HFPolicy.from_model(model, tokenizer)``
plays a model the caller already holds (``rwft iterate``'s generator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rwft.data.chat_template import prepare_messages
from rwft.errors import RwftError
from rwft.rollout.envs.base import Episode


def _row_sampler(temperatures: list[float], seeds: list[int], width: int, max_new_tokens: int, device: Any):
    """A logits processor that draws each row's tokens from that row's own seeded uniforms.

    Row i's uniforms ``u[i, 0..max_new_tokens)`` come from ``torch.Generator(seeds[i])``, drawn once up
    front, and step s picks the token where u[i, s] falls in the row's cumulative distribution (inverse
    CDF). The result depends on the row's own logits and seed only, and the whole batch is sampled in a
    few tensor operations (no per-row loop). Temperature 0 is greedy.
    """
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __init__(self) -> None:
            t = torch.tensor(temperatures, dtype=torch.float32, device=device)
            self.greedy = t <= 0
            self.temp = torch.where(self.greedy, torch.ones_like(t), t)[:, None]
            self.u = torch.stack([
                torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s % (2**63)), dtype=torch.float64)
                for s in seeds
            ]).to(device)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = input_ids.shape[1] - width
            scores = scores.float()
            cdf = torch.softmax(scores / self.temp, dim=-1).double().cumsum(-1)
            u = self.u[:, step : step + 1] * cdf[:, -1:]
            sampled = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=scores.shape[1] - 1)
            chosen = torch.where(self.greedy, scores.argmax(-1), sampled)
            return torch.full_like(scores, float("-inf")).scatter_(1, chosen[:, None], 0.0)

    return RowSampler()


@dataclass
class _Session:
    """The KV cache of the last batch of episodes, kept so that their next turn prefills only new tokens."""

    owners: list[Any]
    """the episode of each row"""
    ids: Any
    """[rows, C] the token in each of the cache's C columns"""
    mask: Any
    """[rows, C] 1 where the column belongs to the row's conversation (0: padding or stale)"""
    cache: Any
    """a transformers DynamicCache holding the C columns"""
    extra: list[Any] = field(default_factory=list)
    """per logits-processor factory, its own KV cache over the same C columns (or None); see ``generate``"""


def _bf16_supported(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device.startswith(("mps", "xpu", "npu"))


def _require_chat_template(tok: Any, name: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise RwftError(f"--policy {name}: the tokenizer has no chat template")


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class HFPolicy:
    """A causal LM with a chat template; batched generation with left padding.

    Between the turns of the same episodes (``act``), the KV cache of the previous call is kept: each
    row's conversation is rendered in full as always, the longest prefix that matches the tokens already
    in the cache is reused, and only the rest (the environment's reply and the next generation prompt)
    is prefilled. Stale or padding columns are masked out, and position ids follow the mask, so the
    tokens and positions the model sees are those of a fresh prefill.
    """

    def __init__(
        self, model: str, max_new_tokens: int = 64, device: str | None = None, trust_remote_code: bool = False,
        reuse_cache: bool = True,
    ):
        """Load ``model`` (a preset, model directory or hub id) and its tokenizer on ``device`` (None: the
        machine's accelerator, or the CPU), in bf16 on an accelerator that has it, else in fp32."""
        import torch

        from rwft.presets import load_model, load_tokenizer

        try:
            tok = load_tokenizer(model, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise RwftError(f"--policy {model}: could not load a tokenizer ({e})") from e
        _require_chat_template(tok, model)
        if device is None:  # the machine's accelerator, whichever kind (CUDA, MPS, XPU, ...), or the CPU
            device = str(torch.accelerator.current_accelerator() or "cpu")
        dtype = torch.bfloat16 if device != "cpu" and _bf16_supported(device) else torch.float32
        lm = load_model(model, trust_remote_code=trust_remote_code, dtype=dtype).to(device).eval()
        self._setup(lm, tok, model, device, max_new_tokens, reuse_cache)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, name: str = "", max_new_tokens: int = 64,
                   reuse_cache: bool = True) -> HFPolicy:
        """A policy playing a model the caller holds: nothing is loaded or copied, the model keeps its device,
        dtype and mode (the caller puts it in eval mode). After changing its weights, call ``reset_cache``.
        ``name`` defaults to the model's ``name_or_path``."""
        _require_chat_template(tokenizer, name or "the model")
        policy = cls.__new__(cls)
        name = name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        policy._setup(model, tokenizer, name, str(model.device), max_new_tokens, reuse_cache)
        return policy

    def _setup(self, model: Any, tok: Any, name: str, device: str, max_new_tokens: int, reuse_cache: bool) -> None:
        self.name = name
        self.model, self.tok, self.device = model, tok, device
        self.max_new_tokens = max_new_tokens
        self.max_len = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.reuse_cache = reuse_cache
        self.generated_tokens = 0
        self.prefilled_tokens = 0
        self._session: _Session | None = None
        self._extra: list[Any] = []
        self.logits_processors: list[Any] = []
        """factories ``(input_ids, attention_mask, cache) -> LogitsProcessor``, see ``generate``"""
        self.cut: list[bool] = []
        """per row of the last ``generate``: True where it stopped at max_new_tokens (no end-of-sequence token)"""

    def _render(self, conv: list[dict[str, Any]], keep: int, tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The conversation's prompt ids, tool calls, tool results and ``tools`` rendered as training renders
        them (``data.chat_template.prepare_messages``)."""
        msgs, _, _, tool_arg = prepare_messages(self.tok, conv, "assistant", tools)
        ids = self.tok.apply_chat_template(msgs, tools=tool_arg, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)[-keep:]  # keep the end when the context would overflow

    def _left_pad(self, rows: list[list[int]]) -> tuple[Any, Any]:
        """Token ids and attention mask of ``rows``, left-padded to the longest."""
        import torch

        width = max(len(r) for r in rows)
        ids = [[self.tok.pad_token_id] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)

    def _resume(self, owners: list[Any], rows: list[list[int]]) -> tuple[Any, Any, Any, list[list[int]]] | None:
        """The previous call's cache narrowed to ``owners``' rows, with each row's uncached suffix; or None.
        The processors' caches (``_Session.extra``) get the same rows and columns, in ``self._extra``."""
        import torch

        from rwft.rollout.kv_cache import compact

        s, self._session = self._session, None
        if s is None:
            return None
        index = {id(o): i for i, o in enumerate(s.owners)}  # the session holds its owners: ids are not reused
        pos = [index.get(id(o)) for o in owners]
        if None in pos:
            return None
        if pos != list(range(len(s.owners))):
            sel = torch.tensor(pos, device=s.ids.device)
            s.cache.batch_select_indices(sel)
            for c in s.extra:
                if c is not None:
                    c.batch_select_indices(sel)
            s.ids, s.mask = s.ids[sel], s.mask[sel]
        mask = s.mask.clone()
        suffixes = []
        for r, row in enumerate(rows):
            cols = mask[r].nonzero().squeeze(1)
            p = min(common_prefix(s.ids[r, cols].tolist(), row), len(row) - 1)
            mask[r, cols[p:]] = 0
            suffixes.append(row[p:])
        for c in s.extra:  # drop the same columns from the processors' caches as from the policy's
            if c is not None:
                compact(c, s.ids, mask)
        ids, mask = compact(s.cache, s.ids, mask)
        self._extra = [c if c is not None and c.get_seq_length() == ids.shape[1] else None for c in s.extra]
        return ids, mask, s.cache, suffixes

    def _shared_prefill(self, rows: list[list[int]]) -> tuple[Any, Any, Any, list[list[int]]] | None:
        """When rows repeat a prompt (m samples of a context), prefill each distinct prompt once, all but its
        last token, and give every row its prompt's cache; each row's suffix is then its last token."""
        import torch

        from rwft.rollout.kv_cache import growing_cache

        distinct: dict[tuple[int, ...], int] = {}
        which = [distinct.setdefault(tuple(r), len(distinct)) for r in rows]
        if len(distinct) == len(rows) or min(len(r) for r in rows) < 2:
            return None
        heads = [list(r[:-1]) for r in distinct]
        ids, mask = self._left_pad(heads)
        cache = growing_cache(self.model.config)
        with torch.no_grad():
            self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       cache=cache, logits_to_keep=1)
        self.prefilled_tokens += sum(len(h) for h in heads)
        index = torch.tensor(which, device=self.device)
        cache.batch_select_indices(index)
        return ids[index], mask[index], cache, [r[-1:] for r in rows]

    def generate(self, conversations: list[list[dict[str, Any]]], temperatures: list[float], seeds: list[int],
                 max_new_tokens: int | None = None, owners: list[Any] | None = None,
                 tools: list[list[dict[str, Any]] | None] | None = None) -> list[str]:
        """The next assistant message for each conversation (rendered as training renders it, with each
        conversation's ``tools`` when given).

        ``owners`` (one object per conversation, e.g. its episode) turns on KV-cache reuse: a later call
        whose owners are all among this call's continues from this call's cache.

        Each factory of ``self.logits_processors`` is called as ``f(input_ids, attention_mask, cache)`` with
        the prompt of the call; its processor runs, in order, before the row sampler (Q-SFT's extraction).
        ``cache`` is None, or the KV cache the factory's processor of the previous call left in its
        ``cache`` attribute, narrowed to this call's rows and to the first ``cache.get_seq_length()`` columns
        of ``input_ids`` (the policy's own cache reuse, applied to the processor's model too).
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from rwft.rollout.kv_cache import growing_cache

        new = max_new_tokens or self.max_new_tokens
        tools = tools or [None] * len(conversations)
        rows = [self._render(c, max(1, self.max_len - new), t) for c, t in zip(conversations, tools, strict=True)]
        resumed, self._extra = None, []
        if self.reuse_cache:
            resumed = (self._resume(owners, rows) if owners is not None else None) or self._shared_prefill(rows)
        if resumed is None:
            old_ids = torch.empty((len(rows), 0), dtype=torch.long, device=self.device)
            old_mask, cache, suffixes = old_ids, growing_cache(self.model.config), rows
        else:
            old_ids, old_mask, cache, suffixes = resumed
        pad = self.tok.pad_token_id
        self.prefilled_tokens += sum(len(r) for r in suffixes)
        new_ids, new_mask = self._left_pad(suffixes)
        input_ids, mask = torch.cat([old_ids, new_ids], dim=1), torch.cat([old_mask, new_mask], dim=1)
        start = input_ids.shape[1]
        config = GenerationConfig(
            max_new_tokens=new, do_sample=False, pad_token_id=pad, eos_token_id=self.tok.eos_token_id
        )
        extra = self._extra if len(self._extra) == len(self.logits_processors) else [None] * len(self.logits_processors)
        procs = [f(input_ids, mask, c) for f, c in zip(self.logits_processors, extra, strict=True)]
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, generation_config=config, cache=cache,
                logits_processor=LogitsProcessorList([*procs, _row_sampler(temperatures, seeds, start, new,
                                                                            self.device)]),
            )
        texts, gen_mask = [], torch.zeros_like(out[:, start:])
        self.cut = [self.tok.eos_token_id not in row for row in out[:, start:].tolist()]
        for r, row in enumerate(out[:, start:].tolist()):
            if self.tok.eos_token_id in row:
                row = row[: row.index(self.tok.eos_token_id) + 1]
            gen_mask[r, : len(row)] = 1
            row = [t for t in row if t not in (pad, self.tok.eos_token_id)]
            self.generated_tokens += len(row)
            texts.append(self.tok.decode(row, skip_special_tokens=True).strip())
        if owners is not None and self.reuse_cache and cache.get_seq_length() == out.shape[1] - 1 \
                and out.shape[1] < 2 * self.max_len:
            kept = [getattr(p, "cache", None) for p in procs]
            kept = [c if c is not None and c.get_seq_length() == out.shape[1] - 1 else None for c in kept]
            self._session = _Session(list(owners), out[:, :-1], torch.cat([mask, gen_mask], dim=1)[:, :-1], cache,
                                     kept)
        return texts

    def act(self, episodes: list[Episode], temperatures: list[float], seeds: list[int]) -> list[str]:
        return self.generate([ep.messages for ep in episodes], temperatures, seeds, owners=episodes,
                             tools=[ep.tools for ep in episodes])

    def reset_cache(self) -> None:
        """Forget the kept KV cache (after the model's weights change, it must not be continued)."""
        self._session = None
