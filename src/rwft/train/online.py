"""The learner of ``rwft iterate``: a trainer, a generator copy and a reference copy of one policy.

- The trainer (train mode) takes one optimizer step per batch of fresh episodes (AdamW with
  TrainingArguments' betas and no weight decay, gradient clipping, a constant learning rate).
- The generator is a model copy (eval mode; ``rwft iterate`` plays it through an ``HFPolicy``) whose weights
  are ``load_state_dict``-ed from the trainer at each sync; between syncs it is stale by up to S steps.
- The reference (eval mode, no gradients) is pi_0 for good, or follows the generator (``sync_reference``).
- With ``lora`` the trainer trains a PEFT adapter and the generator and reference wear one too (equal to the
  trainer's at the start), so a sync is the same ``load_state_dict``; a served generator (``rwft iterate
  --generator-url``) gets the adapter saved and hot-loaded instead.

Every log-probability is of the sampling distribution softmax(logits / T), T = ``temperature`` (as TRL's
online trainers). The objective's entry in ``objectives.registry`` says which loss runs:

- ``dpo``: one pair per prompt (``online_pairs``), TRL's sigmoid DPO loss on the summed log-probabilities
  of the agent's tokens of each whole episode (the environment's turns are context, never scored).
- ``grpo``: group advantages (``grpo_advantages``) and TRL's GRPO loss (``grpo_loss``): the ratio to the
  generator's log-probabilities (the old policy that sampled), clipped at 1 +- epsilon, and a k3 KL term,
  summed over the batch's agent tokens and divided by their number (``loss_type`` dapo, TRL's default) or
  averaged per episode first (grpo).
- an entry with ``weights`` (``swift``, ``refit``): ``weighted_nll`` with those weights of the fresh
  samples (scaled for ``length_normalization`` as ``rwft train`` does), divided by the agent tokens of the
  episodes whose weight is not 0, a negative weight's push bounded at ``push_down_limit`` below the
  reference's log-probability (``rwft train``'s bound, with the reference in pi_0's place).

Several processes (``accelerate launch`` / torchrun): the Learner's ``accelerate.Accelerator`` places the three
copies on its device (the CPU, gloo, where the machine has no accelerator) and wraps the trainer in DDP. Every
process gets the whole step's batch and trains on its share of the groups (``shard``: a task's samples stay in
one process); each normalizer (the batch's sequences, pairs or weighted tokens, and the length normalization's
mean) is the whole batch's, and each process's loss is multiplied by the number of processes, so DDP's mean of
the gradients is the one-process gradient. A sync loads the weights on every process.

Tools and error spans. Each episode is encoded with its record's ``tools``, so the chat template renders them
as the generator saw them. An agent message's error ``spans`` (``rwft iterate --span-judge``) become token
penalties p_t (``data.encode``); GRPO's advantage of a token is A_i - span_weight * p_t and Swift's / Refit's
weight w_i - span_weight * p_t where w_i != 0 (``objectives.online.span_advantages``; ``rwft train``'s
convention, ``train.collate.token_weights``), so tokens outside every span keep the episode's value.

Each step also measures, on all the step's samples before the update: the generator's mean next-token
entropy, the trainer's k3 KL to the reference, and the response length (agent tokens per episode). The k3
estimate is KL(trainer || reference) only on the trainer's own samples (S = 1, or the step after a sync); on
a stale generator's samples it is off-policy (docs/iterate.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from rwft.data.weighting import LengthNormalization, normalize_lengths, resolve_normalization
from rwft.errors import RwftError
from rwft.objectives.registry import OBJECTIVES, Objective, get, names


@dataclass
class LearnerConfig:
    """The learner's options: what ``train.online.Learner`` reads (``rwft iterate``'s config extends it)."""

    policy: str = ""
    """pi_0: a preset, a model directory or a hub id; trainer, generator and reference all start from it."""
    objective: str = field(default="dpo", metadata={"help": "; ".join(
        f"{n}: {OBJECTIVES[n].help}" for n in names(online=True))})
    """The objective (the online entries of rwft.objectives.registry)."""
    temperature: float = 1.0
    """Sampling temperature of the generator; every log-probability is taken of softmax(logits / temperature)."""
    learning_rate: float = 1e-4
    """Learning rate (AdamW, constant)."""
    adam_epsilon: float = 1e-8
    """AdamW's epsilon (Bridging used 1e-4 for verifiable DPO)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    beta: float = 0.1
    """DPO's beta."""
    kl_coef: float = 0.001
    """GRPO's KL coefficient to the reference (TRL's beta)."""
    epsilon: float = 0.2
    """GRPO's clipping: the ratio to the generator's probability is clipped to [1 - epsilon, 1 + epsilon]."""
    loss_type: Literal["dapo", "grpo"] = "dapo"
    """GRPO's aggregation over tokens (TRL's loss_type): dapo (TRL's default) weighs every agent token of the batch
    equally; grpo averages each episode's tokens first, which pushes down the tokens a group's episodes share when its
    failed episodes are the shorter ones (TRL: "not recommended due to length bias")."""
    scale_advantages: bool = True
    """GRPO: divide each advantage by its group's sample std (+ 1e-4), as TRL and Bridging do; false keeps
    r - group mean (Dr. GRPO)."""
    length_normalization: LengthNormalization = "auto"
    """Swift / Refit: how an episode's length scales its weight, as rwft train's --length-normalization (sum,
    trajectory, turn, auto), with the step's batch as the data."""
    push_down_limit: float = 0.2
    """Swift / Refit: bounded push-down, as rwft train's --push-down-limit: a token with a negative weight stops being
    pushed once the trainer gives it e^delta times less than the reference does (delta this value; inf: the paper's
    unbounded objective)."""
    span_weight: float = 0.1
    """lambda of the error spans (--span-judge): a token in a span gets GRPO advantage A - lambda * p (Swift / Refit:
    weight w - lambda * p where w != 0), p its severity's penalty (minor 1, major 5, critical 10); 0 ignores spans.
    As rwft train's --span-weight: 0.1 makes one critical error cost 1, the whole range of a [0, 1] reward."""
    pairing_threshold: float = 0.5
    """DPO on verifiable environments: a response is right when its verdict (mcqa: the reward, twenty-questions:
    the win) is >= this."""
    max_length: int = 512
    """Longest episode in tokens for training (oldest exchanges dropped beyond it)."""
    seed: int = 0
    """Seed of the tasks, the sampling and the pairs."""
    lora: bool = False
    """Train a LoRA adapter (PEFT, all linear layers) instead of all weights; needed by --generator-url."""
    lora_r: int = 8
    """LoRA rank (a vLLM server needs --max-lora-rank at least this)."""
    lora_alpha: int = 16
    """LoRA scaling alpha."""
    trust_remote_code: bool = False
    """Allow custom model code from the hub."""

    def entry(self) -> Objective:
        """The objective's registry entry (an RwftError names the online objectives)."""
        try:
            entry = get(self.objective, online=True)
        except ValueError as e:
            raise RwftError(f"--objective {self.objective!r}: {e}") from None
        if not self.push_down_limit >= 0.0:
            raise RwftError(f"--push-down-limit: expected a value >= 0 (inf: no limit), got {self.push_down_limit}")
        if not self.span_weight >= 0.0:
            raise RwftError(f"--span-weight: expected a value >= 0 (0 ignores spans), got {self.span_weight}")
        return entry


def share(n: int, index: int, processes: int) -> slice:
    """Process ``index``'s contiguous block of n items split over ``processes`` (sizes differ by at most 1)."""
    return slice(n * index // processes, n * (index + 1) // processes)


def make_accelerator():
    """accelerate's Accelerator; on a machine without an accelerator, cpu=True (so torchrun's processes run as
    CPU DDP over gloo), as ``train.skeleton.RunArguments`` does."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.accelerator.is_available())


class Learner:
    """Trainer, generator and reference; ``step`` trains on records, ``sync`` copies the trainer's weights.

    ``model`` is the trainer itself (save it, read its weights); ``wrapped`` is what accelerate prepared from it
    (DDP with several processes), the module the step runs forward."""

    def __init__(self, c: LearnerConfig):
        from rwft.presets import load_model, load_tokenizer

        self.entry = c.entry()
        self.c = c
        self.accelerator = make_accelerator()
        torch.manual_seed(c.seed)
        self.tok = load_tokenizer(c.policy, c.trust_remote_code)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.generator_model = load_model(c.policy, c.trust_remote_code).eval().requires_grad_(False)
        self.on_sync: list[Callable[[], None]] = []  # called after each sync (the policy playing the generator)
        self.model = load_model(c.policy, c.trust_remote_code).train()
        self.reference = load_model(c.policy, c.trust_remote_code).eval().requires_grad_(False)
        if c.lora:  # the three copies wear the same adapter, so a sync is one load_state_dict as without LoRA
            from rwft.train.skeleton import add_lora

            self.model = add_lora(self.model, c).train()
            self.generator_model = add_lora(self.generator_model, c).eval()
            self.reference = add_lora(self.reference, c).eval().requires_grad_(False)
            self.sync(reference=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.learning_rate, eps=c.adam_epsilon, weight_decay=0.0)
        device = self.accelerator.device
        self.generator_model.to(device)
        self.reference.to(device)
        self.wrapped, self.optimizer = self.accelerator.prepare(self.model, optimizer)

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes

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
        """Right-padded ids (each record rendered with its ``tools``), attention mask, labels on every agent token
        (-100 elsewhere) except the end-of-turn marker (a turn's last token) of the turns listed in
        ``metadata.cut_turns`` (cut at the token limit, the generator never sampled it), and ``token_penalty``, each
        token's error-span penalty (0 outside spans and on padding)."""
        from rwft.data.encode import encode_batch
        from rwft.train.collate import WeightedCollator

        encoded = encode_batch(self.tok, [r["messages"] for r in records], self.c.max_length,
                               tools=[r.get("tools") for r in records])
        rows = []
        for r, enc in zip(records, encoded, strict=True):
            if enc is None:
                raise RwftError(f"episode {r['id']}: longer than --max-length {self.c.max_length} even truncated")
            turns = max(enc.turn_index) + 1
            rows.append({"input_ids": enc.input_ids, "turn_index": enc.turn_index, "turn_weights": [1.0] * turns})
        batch = WeightedCollator(self.tok.pad_token_id)(rows)
        batch["turn_index"] = torch.full_like(batch["labels"], -1)
        batch["token_penalty"] = torch.zeros(batch["labels"].shape)
        for i, (r, enc) in enumerate(zip(records, encoded, strict=True)):
            batch["turn_index"][i, : len(enc.turn_index)] = torch.tensor(enc.turn_index)
            if enc.token_penalty:
                batch["token_penalty"][i, : len(enc.token_penalty)] = torch.tensor(enc.token_penalty)
            for t in r["metadata"].get("cut_turns", ()):
                last = max((k for k, x in enumerate(enc.turn_index) if x == t), default=None)
                if last is not None:  # None: the turn was dropped by truncation
                    batch["labels"][i, last] = -100
        return batch

    def token_weights(self, batch: dict[str, torch.Tensor], weights: np.ndarray) -> torch.Tensor:
        """Each trained token's weight: its episode's, spread over the episode's agent turns and scaled for
        ``length_normalization`` (``data.weighting.normalize_lengths``, token counts of the labels)."""
        turn = np.where(batch["labels"].numpy() != -100, batch["turn_index"].numpy(), -1)
        turns = np.maximum(batch["turn_index"].numpy().max(1) + 1, 1)
        offsets = np.concatenate([[0], np.cumsum(turns)])
        flat = np.where(turn >= 0, offsets[:-1, None] + turn, 0)
        tokens = np.bincount(flat[turn >= 0], minlength=offsets[-1])
        values = np.repeat(np.asarray(weights, dtype=np.float64), turns)
        mode = resolve_normalization(self.c.length_normalization, values, tokens)
        values = normalize_lengths(values, offsets, tokens, mode)
        return torch.from_numpy(np.where(turn >= 0, values[flat], 0.0)).float()

    def token_logps(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log softmax(z / T)(y_t) of each label token ([B, T-1], 0 off the agent's tokens) and the mask."""
        labels = labels[:, 1:]
        mask = labels != -100
        logp = torch.log_softmax(logits[:, :-1].float() / self.c.temperature, dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * mask, mask

    # ---------------------------------------------------------------------------------------- a step

    def step(self, records: list[dict[str, Any]], rng: random.Random,
             verdicts: list[float | None]) -> dict[str, float]:
        """One optimizer step on the records (one batch of fresh episodes); returns the step's measurements.

        ``verdicts[i]``: None when record i's reward is graded (DPO pairs the best with the worst response of
        its group); otherwise the value that makes it right when >= ``pairing_threshold`` (DPO pairs a random
        right with a random wrong response)."""
        loss, out = self.loss(records, rng, verdicts)
        if loss is None:  # nothing to learn from (all groups skipped): no update, Adam's moments untouched
            out["loss"] = float("nan")
            return out
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.c.max_grad_norm)  # DDP's averaged gradients
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out.update(loss=self.across(float(loss.detach()) / self.processes, 1.0, mean=False),
                   grad_norm=float(grad_norm))
        return out

    def shard(self, groups: list[str]) -> list[int]:
        """The rows this process trains on: the groups, in order of first appearance, split into contiguous blocks
        by process index (``share``); all rows with one process."""
        if self.processes == 1:
            return list(range(len(groups)))
        order = list(dict.fromkeys(groups))
        if len(order) < self.processes:  # the same on every process, so all of them stop
            raise RwftError(f"{len(order)} tasks in the step for {self.processes} processes: give each process "
                            "one or more (--prompts-per-step)")
        mine = set(order[share(len(order), self.accelerator.process_index, self.processes)])
        return [i for i, g in enumerate(groups) if g in mine]

    def across(self, value: float, weight: float, mean: bool = True) -> float:
        """This process's ``value`` combined with the other processes': the ``weight``-weighted mean (the sum
        with ``mean`` false); ``value`` itself with one process."""
        if self.processes == 1:
            return value
        x = torch.tensor([value * weight, weight], dtype=torch.float64, device=self.accelerator.device)
        total, weights = self.accelerator.reduce(x, reduction="sum").tolist()
        return total / max(weights, 1e-12) if mean else total

    def loss(self, records: list[dict[str, Any]], rng: random.Random,
             verdicts: list[float | None]) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The objective's loss on this process's share of the records (None: nothing to learn from in the whole
        batch) and the step's measurements over all of them.

        ``records`` are the whole step's batch, the same on every process; the advantages, pairs and weights, and
        every normalizer, are the whole batch's. The loss is this process's part of the batch's loss times the
        number of processes, so that DDP's mean of the gradients is the batch's gradient."""
        from rwft.objectives import online

        rewards = [float(r["reward"]) for r in records]
        groups = [f"{r['metadata']['env']}|{r['context_id']}" for r in records]
        full = self.collate(records)
        rows = self.shard(groups)
        width = int(full["attention_mask"][rows].sum(1).max())  # right padded: drop the columns the share pads
        ids, attn, labels = (full[k][rows, :width].to(self.accelerator.device)
                             for k in ("input_ids", "attention_mask", "labels"))
        temp, procs = self.c.temperature, self.processes
        with torch.no_grad():
            gen_logits = self.generator_model(input_ids=ids, attention_mask=attn).logits
            entropy = online.masked_entropy(gen_logits[:, :-1] / temp, labels[:, 1:] != -100)
            old_logps = self.token_logps(gen_logits, labels)[0] if self.entry.name == "grpo" else None
            del gen_logits
            ref_logps, _ = self.token_logps(self.reference(input_ids=ids, attention_mask=attn).logits, labels)
        logits = self.wrapped(input_ids=ids, attention_mask=attn).logits
        logps, mask = self.token_logps(logits, labels)
        kl = (online.per_token_kl(logps.detach(), ref_logps) * mask).sum() / mask.sum().clamp(min=1)
        tokens = float(mask.sum())
        penalty = full["token_penalty"]
        spans = self.c.span_weight > 0 and bool((penalty > 0).any())
        out = {"entropy": self.across(float(entropy), tokens), "kl": self.across(float(kl), tokens),
               "response_tokens": self.across(tokens / len(rows), len(rows))}
        if self.c.span_weight > 0:  # the share of the batch's agent tokens inside an error span
            trained = full["labels"] != -100
            out["span_tokens"] = float((penalty > 0)[trained].float().mean()) if trained.any() else 0.0
        loss = None
        if self.entry.weights is not None:
            w = self.entry.weights(rewards, groups)
            weights = self.token_weights(full, w)
            lab = full["labels"].masked_fill(weights == 0, -100)
            if spans:  # the labels and the normalizer stay those without spans
                weights = torch.where(weights != 0, online.span_advantages(weights, penalty, self.c.span_weight), 0.0)
            out["weighted_episodes"] = int((w != 0).sum())
            if (lab != -100).any():  # normalized by the agent tokens of the batch's weighted episodes
                from rwft.objectives.losses import weighted_nll

                n = (lab[:, 1:] != -100).sum()
                lab, weights = (x[rows, :width].to(self.accelerator.device) for x in (lab, weights))
                ref = torch.nn.functional.pad(ref_logps, (1, 0))  # weighted_nll's alignment: position t scores t
                loss = weighted_nll(logits / temp, lab, weights, n, ref, self.c.push_down_limit) * procs
        elif self.entry.name == "dpo":
            pairs, skipped = self.pairs(rewards, groups, verdicts, rng)
            out.update(pairs=len(pairs), skipped_groups=skipped)
            at = {i: k for k, i in enumerate(rows)}
            mine = [(at[c], at[r]) for c, r in pairs if c in at]  # a pair's two responses share a group
            if mine:
                seq, ref_seq = logps.sum(-1), ref_logps.sum(-1)
                c, r = torch.tensor([p[0] for p in mine]), torch.tensor([p[1] for p in mine])
                part = online.dpo_loss(seq[c], seq[r], ref_seq[c], ref_seq[r], self.c.beta)
                loss = part * (len(mine) / len(pairs)) * procs
            elif pairs:  # other processes' pairs: this one still joins DDP's gradient reduction, with 0
                loss = logps.sum() * 0.0
        elif self.entry.name == "grpo":
            adv = torch.tensor(online.grpo_advantages(rewards, groups, self.c.scale_advantages))
            out["nonzero_advantage"] = float((adv.abs() > 1e-9).float().mean())
            mine = adv[rows]
            if spans:  # per token, aligned with the label tokens (logps[:, t] scores ids[:, t + 1])
                mine = online.span_advantages(mine, penalty[rows, 1:width], self.c.span_weight)
            tokens = float((full["labels"][:, 1:] != -100).sum())  # the whole batch's, for dapo
            part = online.grpo_loss(logps, old_logps, ref_logps, mine.to(logps.device), mask, self.c.kl_coef,
                                    self.c.epsilon, self.c.loss_type, tokens)
            loss = part * (1.0 if self.c.loss_type == "dapo" else len(rows) / len(records)) * procs
        else:
            raise RwftError(f"--objective {self.entry.name}: no online loss for it")
        return loss, out

    def pairs(self, rewards: list[float], groups: list[str], verdicts: list[float | None],
              rng: random.Random) -> tuple[list[tuple[int, int]], int]:
        """DPO's (chosen, rejected) pairs: verifiable records by their verdicts, graded ones by their rewards."""
        from rwft.objectives.online import online_pairs

        pairs, skipped = [], 0
        for verifiable in (True, False):
            idx = [i for i, v in enumerate(verdicts) if (v is not None) == verifiable]
            if idx:
                scores = [verdicts[i] if verifiable else rewards[i] for i in idx]
                p, k = online_pairs(scores, [groups[i] for i in idx], verifiable, rng, self.c.pairing_threshold)
                pairs += [(idx[a], idx[b]) for a, b in p]
                skipped += k
        return pairs, skipped
