"""The learner of ``rwft iterate``: a trainer, a generator copy and a reference copy of one policy.

- The trainer (train mode) takes one optimizer step per batch of fresh episodes (AdamW with
  TrainingArguments' defaults, gradient clipping, a constant learning rate).
- The generator is a model copy (eval mode; ``rwft iterate`` plays it through an ``HFPolicy``) whose weights
  are ``load_state_dict``-ed from the trainer at each sync; between syncs it is stale by up to S steps.
- The reference (eval mode, no gradients) is pi_0 for good, or follows the generator (``sync_reference``).
- With ``lora`` the trainer trains a PEFT adapter and the generator and reference wear one too (equal to the
  trainer's at the start), so a sync is the same ``load_state_dict``; a served generator (``rwft iterate
  --generator-url``) gets the adapter saved and hot-loaded instead, and the in-process copy only measures.

Objectives (the math is ``objectives.online`` and ``objectives.losses``):

- ``dpo``: one pair per prompt (``online_pairs``), TRL's sigmoid DPO loss on the summed log-probabilities
  of the agent's tokens of each whole episode (the environment's turns are context, never scored).
- ``grpo``: advantages r - group mean (``grpo_advantages``), TRL's on-policy GRPO loss with a k3 KL term.
- ``swift`` / ``refit``: rwft's ``weighted_nll`` with the Swift / Refit weights of the fresh samples and the
  same normalizer as ``rwft train`` (agent tokens of the conversations with a non-zero weight).

Each step also measures, on all the step's samples before the update: the generator's mean next-token
entropy, the trainer's k3 KL to the reference, and the response length (agent tokens per episode). The k3
estimate is KL(trainer || reference) only on the trainer's own samples, i.e. when the generator is the trainer
(S = 1, or the step after a sync); on a stale generator's samples it is off-policy and grows without bound
where the trainer has pushed the sampled tokens down (offline DPO: thousands). It is 0 when the reference is
synced at S = 1 (the three copies are equal before each update).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rwft.errors import RwftError

OBJECTIVES = ("dpo", "grpo", "swift", "refit")


@dataclass
class LearnerSettings:
    """What the learner needs from ``IterateConfig`` (kept apart so tests can build one directly)."""

    model: str
    objective: str
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.1
    kl_coef: float = 0.001
    scale_advantages: bool = False
    max_length: int = 512
    max_new_tokens: int = 48
    trust_remote_code: bool = False
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    seed: int = 0


class Learner:
    """Trainer, generator and reference; ``step`` trains on records, ``sync`` copies the trainer's weights."""

    def __init__(self, s: LearnerSettings):
        from rwft.presets import load_model, load_tokenizer

        if s.objective not in OBJECTIVES:
            raise RwftError(f"--objective {s.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        self.s = s
        torch.manual_seed(s.seed)
        self.tok = load_tokenizer(s.model, s.trust_remote_code)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.generator_model = load_model(s.model, s.trust_remote_code).eval().requires_grad_(False)
        self.on_sync: list[Callable[[], None]] = []  # called after each sync (the policy playing the generator)
        self.model = load_model(s.model, s.trust_remote_code).train()
        self.reference = load_model(s.model, s.trust_remote_code).eval().requires_grad_(False)
        if s.lora:  # the three copies wear the same adapter, so a sync is one load_state_dict as without LoRA
            from rwft.train.skeleton import add_lora

            self.model = add_lora(self.model, s).train()
            self.generator_model = add_lora(self.generator_model, s).eval()
            self.reference = add_lora(self.reference, s).eval().requires_grad_(False)
            self.sync(reference=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=s.learning_rate,
                                           betas=(s.adam_beta1, s.adam_beta2), eps=s.adam_epsilon,
                                           weight_decay=s.weight_decay)

    # ------------------------------------------------------------------------------------------- sync

    def sync(self, reference: bool) -> None:
        """The generator (and, with ``reference``, the reference) takes the trainer's weights."""
        state = self.model.state_dict()
        self.generator_model.load_state_dict(state)
        for hook in self.on_sync:  # e.g. a KV cache made by the old weights must not be continued
            hook()
        if reference:
            self.reference.load_state_dict(state)

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict[str, Any], generator_synced: bool, reference_synced: bool) -> None:
        """Restore the trainer and optimizer; the generator / reference take the trainer's weights when they
        were synced at the checkpoint's step (else they are still pi_0, as loaded)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if generator_synced:
            self.sync(reference_synced)

    # -------------------------------------------------------------------------------------- batching

    def collate(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-padded ids, attention mask, and labels on every agent token (-100 elsewhere)."""
        from rwft.data.encode import encode_batch
        from rwft.train.collate import WeightedCollator

        encoded = encode_batch(self.tok, [r["messages"] for r in records], self.s.max_length)
        rows = []
        for r, enc in zip(records, encoded, strict=True):
            if enc is None:
                raise RwftError(f"episode {r['id']}: longer than --max-length {self.s.max_length} even truncated")
            turns = max(enc.turn_index) + 1
            rows.append({"input_ids": enc.input_ids, "turn_index": enc.turn_index, "turn_weights": [1.0] * turns})
        return WeightedCollator(self.tok.pad_token_id)(rows)

    @staticmethod
    def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(y_t | y_<t) of each label token ([B, T-1], 0 off the agent's tokens) and the mask."""
        labels = labels[:, 1:]
        mask = labels != -100
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * mask, mask

    # ---------------------------------------------------------------------------------------- a step

    def step(self, records: list[dict[str, Any]], rng: random.Random,
             verifiable: list[bool]) -> dict[str, float]:
        """One optimizer step on the records (one batch of fresh episodes); returns the step's measurements.

        ``verifiable[i]``: record i's reward is right/wrong (DPO pairs a random correct with a random incorrect
        response) rather than graded (best against worst)."""
        from rwft.objectives import online
        from rwft.objectives.losses import weighted_nll
        from rwft.objectives.weights import refit_weights, swift_weights

        rewards = [float(r["reward"]) for r in records]
        groups = [f"{r['metadata']['env']}|{r['context_id']}" for r in records]
        batch = self.collate(records)
        ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        with torch.no_grad():
            gen_logits = self.generator_model(input_ids=ids, attention_mask=attn).logits
            entropy = online.masked_entropy(gen_logits[:, :-1], labels[:, 1:] != -100)
            del gen_logits
            ref_logps, _ = self.token_logps(self.reference(input_ids=ids, attention_mask=attn).logits, labels)
        logits = self.model(input_ids=ids, attention_mask=attn).logits
        logps, mask = self.token_logps(logits, labels)
        kl = (online.per_token_kl(logps.detach(), ref_logps) * mask).sum() / mask.sum().clamp(min=1)
        out = {"entropy": float(entropy), "kl": float(kl), "response_tokens": float(mask.sum()) / len(records)}
        obj = self.s.objective
        loss = None
        if obj == "dpo":
            by_kind = {True: [], False: []}
            for i, v in enumerate(verifiable):
                by_kind[v].append(i)
            pairs, skipped = [], 0
            for kind, idx in by_kind.items():
                if idx:
                    p, k = online.online_pairs([rewards[i] for i in idx], [groups[i] for i in idx], kind, rng)
                    pairs += [(idx[a], idx[b]) for a, b in p]
                    skipped += k
            out.update(pairs=len(pairs), skipped_groups=skipped)
            if pairs:
                seq, ref_seq = logps.sum(-1), ref_logps.sum(-1)
                c, r = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
                loss = online.dpo_loss(seq[c], seq[r], ref_seq[c], ref_seq[r], self.s.beta)
        elif obj == "grpo":
            adv = torch.tensor(online.grpo_advantages(rewards, groups, self.s.scale_advantages))
            out["nonzero_advantage"] = float((adv.abs() > 1e-9).float().mean())
            loss = online.grpo_loss(logps, ref_logps, adv, mask, self.s.kl_coef)
        else:
            w = swift_weights(rewards, groups) if obj == "swift" else refit_weights(rewards)
            weights = torch.tensor(w, dtype=torch.float32)[:, None].expand_as(labels)
            active = torch.tensor([x != 0 for x in w])
            lab = labels.masked_fill(~active[:, None], -100)
            n = int((lab != -100).sum())  # rwft train's normalizer: agent tokens of the weighted episodes
            out["weighted_episodes"] = int(active.sum())
            if n > 0:
                loss = weighted_nll(logits, lab, weights, n)
        if loss is None:  # nothing to learn from (all groups skipped): no update, Adam's moments untouched
            out["loss"] = float("nan")
            return out
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out.update(loss=float(loss.detach()), grad_norm=float(grad_norm))
        return out
