"""Q-SFT's math (Hong, Dragan, Levine 2024, arXiv 2411.05193): token probabilities as Q-values.

Pure functions, no rwft imports. Positions are *label-aligned*: position t holds the logged token a_t, the
state s_t is everything before it, and the model's logits at t - 1 give p(. | s_t).

- ``transitions``: for each agent token, its next state, the reward on the way and the discount. Within an
  agent turn the next state is the next token of the turn (reward 0, discount 1: a turn is one action
  spread over tokens, so no discount inside it). The next state of a turn's last token (its end-of-turn
  marker) is the first token of the next agent turn, i.e. after the environment's reply, with the turn's
  reward and discount gamma per agent turn. A turn absent from the sequence (``weight: 0``: turn index -1)
  is skipped: its reward is added, discounted, to the return on the way (an n-step target through it).
  After the last agent turn there is no next state: B = r.
- ``next_state_values``: max_a' p_bar(a'|s') / pi_phi(a'|s') over a finite support, the behaviour policy's
  top-k tokens at s' and the logged token at s', each only when pi_phi >= ``SUPPORT_MIN_PROB``. The paper's max
  runs over the whole vocabulary, where the ratio is unbounded: p_bar spreads (1 - B)/(V - 1) over every
  token the data never shows while pi_phi may give such a token 1e-9, so the max would be decided by tokens
  the behaviour policy never takes. Restricting it to the behaviour's support is the usual conservative
  (BCQ-like) choice and lets pi_phi's figures be computed once and cached. The ratio is clamped to [0, 1]
  (Q-values of returns in [0, 1] lie there).
- ``bellman_targets``: B = clip(max(Y, G), 0, 1), Y Peng's Q(lambda) return along the logged sequence
  (lambda per position: the trainer uses 1 inside a turn and ``--qsft-lambda`` into the next turn), G the
  logged return-to-go, a lower bound of Q* where the environment is deterministic given the agent's turns.
  lambda = 0 is the paper's one-step target clip(r + discount * V(s'), 0, 1). Why not one-step alone: the
  Q model and its target start close to pi_phi, so V = 1 at every state and the targets start at their
  maximum; one-step targets carry a conversation's reward back one token per target update, and a lower
  bound alone cannot lower them.
- ``qsft_loss``: the paper's weighted cross-entropy without a dense V-sized target.
- ``polyak_``: theta_bar <- (1 - alpha) theta_bar + alpha theta.

Fixed point of the loss at one state (what the test checks). With actions drawn from pi_beta and a target
B_a for each, the expected loss is -sum_v c_v log p_v with c_v = pi_beta(v) B_v + sum_{a != v} pi_beta(a)
(1 - B_a) / (V - 1), and sum_v c_v = 1, so the minimizer is p_v = c_v: p_v = B_v pi_beta(v) + e_v, e_v =
(sum_{a != v} pi_beta(a)(1 - B_a)) / (V - 1) <= 1 / (V - 1). The paper's p = B * pi_beta holds up to that
O(1/V) spread (2e-5 for SmolLM2's 49152 tokens); off the behaviour's support p_v = e_v, which is why the
max over a' is restricted to the support.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SUPPORT_MIN_PROB = 1e-3
"""Behaviour top-k tokens below this probability are left out of the max over next actions."""


def transitions(turn_index: np.ndarray, turn_rewards: np.ndarray, gamma: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(next, reward, discount) per position of one sequence; next = -1 for no next state (terminal or not an
    agent token). For the last token of agent turn k whose next present turn is k' (or none):
    reward = sum_{j=k}^{k'-1} gamma^(j-k) r_j, discount = gamma^(k'-k) (0 when none, summing to the last turn)."""
    ti = np.asarray(turn_index, dtype=np.int64)
    r = np.asarray(turn_rewards, dtype=np.float64)
    n = len(ti)
    nxt = np.full(n, -1, dtype=np.int64)
    reward = np.zeros(n, dtype=np.float64)
    disc = np.zeros(n, dtype=np.float64)
    agent = np.nonzero(ti >= 0)[0]
    if not len(agent):
        return nxt, reward, disc
    same = np.zeros(len(agent), dtype=bool)
    same[:-1] = (ti[agent[1:]] == ti[agent[:-1]]) & (agent[1:] == agent[:-1] + 1)
    inside = agent[same]
    nxt[inside], disc[inside] = inside + 1, 1.0
    last = agent[~same]
    firsts = {}
    for p in agent[::-1]:
        firsts[int(ti[p])] = int(p)
    turns = sorted(firsts)
    for p in last:
        k = int(ti[p])
        later = [j for j in turns if j > k]
        stop = later[0] if later else len(r)
        reward[p] = sum(gamma ** (j - k) * r[j] for j in range(k, stop))
        if later:
            nxt[p], disc[p] = firsts[stop], gamma ** (stop - k)
    return nxt, reward, disc


def next_state_values(logp_target: torch.Tensor, logp_behaviour: torch.Tensor) -> torch.Tensor:
    """V(s') = min(1, max_{a' in S} p_bar(a'|s') / pi_phi(a'|s')) over the last dimension, S = the entries with
    pi_phi >= ``SUPPORT_MIN_PROB`` (0 if none is in it).

    The floor holds for every entry, the logged token's included: below it p_bar(a') ~ B pi_beta(a') + e with
    the loss's uniform spread e ~ (1 - B) / (V - 1), so the ratio is e / pi_phi(a'), decided by the spread and
    not by B (a logged token with pi_phi = 1e-6 and a 2048-token vocabulary gives ratio ~ 500, V = 1). Dividing
    by the floor instead would still add up to e / floor to every such ratio and make the logged token's
    estimate unlike the top-k's; leaving it out is the support's own rule (its Q-value is still learned, as a
    target of its own state)."""
    inside = logp_behaviour >= math.log(SUPPORT_MIN_PROB)
    ratio = torch.exp(logp_target - torch.where(inside, logp_behaviour, torch.zeros_like(logp_behaviour)))
    return torch.where(inside, ratio, torch.zeros_like(ratio)).amax(dim=-1).clamp(0.0, 1.0)


def bellman_targets(reward: torch.Tensor, discount: torch.Tensor, nxt: torch.Tensor, values: torch.Tensor,
                    lam: torch.Tensor) -> torch.Tensor:
    """B_t = clip(max(Y_t, G_t), 0, 1) along each row (``next`` indexes the same row; next_t > t or -1), with

        Y_t = r_t + d_t [(1 - lam_t) V[next_t] + lam_t Y[next_t]]     (Peng's Q(lambda) return)
        G_t = r_t + d_t G[next_t]                                      (the logged return-to-go)

    and V[-1] = Y[-1] = G[-1] = 0. lam_t = 0 everywhere is the one-step target r + d V(s'); lam_t = 1 is G.
    max(Y, G): G is the return of one continuation of (s_t, a_t), so where the environment is deterministic
    given the agent's turns (twenty-questions) it is at most Q*(s_t, a_t); where it is not, it is one sample
    of Q^beta and the max leans towards lucky outcomes (self-imitation's bias). The clip keeps targets in
    [0, 1] when V overshoots."""
    y, g = torch.zeros_like(reward), torch.zeros_like(reward)
    has, idx = nxt >= 0, nxt.clamp(min=0)
    v = values.gather(-1, idx) * has
    for t in range(reward.size(-1) - 1, -1, -1):  # next_t > t: Y and G at next_t are final
        j = idx[..., t:t + 1]
        y_next, g_next = y.gather(-1, j).squeeze(-1) * has[..., t], g.gather(-1, j).squeeze(-1) * has[..., t]
        y[..., t] = reward[..., t] + discount[..., t] * ((1 - lam[..., t]) * v[..., t] + lam[..., t] * y_next)
        g[..., t] = reward[..., t] + discount[..., t] * g_next
    return torch.maximum(y, g).clamp(0.0, 1.0)


def qsft_loss(logits: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
              num_items: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L = -sum_t [B_t log p(a_t) + (1 - B_t) / (V - 1) * sum_{v != a_t} log p(v)] / N, and log p(a_t).

    ``logits`` (M, V) at the M agent tokens, ``actions`` (M) the logged tokens, ``targets`` (M) their B.
    sum_{v != a} log p(v) = sum_v logits_v - V * logsumexp(logits) - log p(a): no (M, V) target is built.
    N as in ``weighted_nll`` (conversations in the optimizer batch x mean agent tokens per conversation; M
    without ``num_items``), so the gradient is the same however the optimizer batch is split."""
    logits = logits.float()
    vocab = logits.size(-1)
    lse = torch.logsumexp(logits, dim=-1)
    logp_a = logits.gather(-1, actions[:, None]).squeeze(-1) - lse
    others = logits.sum(-1) - vocab * lse - logp_a
    b = targets.to(logits.dtype)
    total = -(b * logp_a + (1.0 - b) / (vocab - 1) * others).sum()
    n = actions.numel() if num_items is None else num_items
    if torch.is_tensor(n):
        n = n.to(total.device)
    return total / n, logp_a


@torch.no_grad()
def polyak_(target: list[torch.Tensor], params: list[torch.Tensor], alpha: float) -> None:
    """In place: theta_bar <- (1 - alpha) * theta_bar + alpha * theta."""
    for t, p in zip(target, params, strict=True):
        t.lerp_(p.detach().to(t.dtype), alpha)


def action_turns(turn_index) -> np.ndarray:
    """The row's turn indices with position 0 set to -1: no logit predicts the first token (it has no state
    before it), so it is never an action; everything Q-SFT computes per agent token (the behaviour cache, the
    labels, the transitions) uses these."""
    ti = np.array(turn_index, dtype=np.int64)
    ti[:1] = -1
    return ti
