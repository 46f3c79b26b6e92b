"""``rwft train --objective star-gate-d``: STaR-GATE-D, the paper's distilled STaR-GATE baseline.

STaR-GATE is SFT on each context's top trajectory (the ``filtered`` weights, ``--top-k`` / ``--threshold``);
STaR-GATE-D adds a distillation term toward the starting model pi_0's next-token distribution at every
trained token (``objectives.losses.distill_nll``: (1 - lam) * NLL + lam * T^2 * KL(pi_0 || pi) at temperature
T, lam = ``--distill-weight`` 0.5, T = ``--distill-temperature`` 2.0, the paper's values). pi_0 is
``--model``: with ``--lora`` the teacher's forward pass is the same network with the adapter disabled (no
second copy in memory); without LoRA a frozen second copy of ``--model`` is loaded beside the policy.
The paper trained it with LoRA r=8, alpha=16, lr 3e-6, 2 epochs. Data, batching, the normalizer and the run
directory are those of ``rwft train`` (``train.weighted``), so the gradient does not depend on how an
optimizer batch is split, and the run resumes as any other.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from rwft.train import skeleton, weighted
from rwft.train.weighted import TrainConfig, WeightedTrainer, model_inputs


class DistillTrainer(WeightedTrainer):
    """WeightedTrainer whose loss adds the distillation term toward pi_0 (``distill_nll``)."""

    def __init__(self, *args, teacher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher  # None: the policy is a PEFT model and pi_0 is it with the adapter disabled
        self._kl_sum, self._kl_tokens = 0.0, 0

    @torch.no_grad()
    def teacher_logits(self, model, inputs) -> torch.Tensor:
        """pi_0's logits on the batch: the frozen copy, or the policy with its LoRA adapter disabled."""
        if self.teacher is not None:
            self.teacher.to(inputs["input_ids"].device)
            return self.teacher(**inputs).logits
        net = self.accelerator.unwrap_model(model)
        was_training = net.training
        net.eval()  # no dropout in the teacher's pass
        try:
            with net.disable_adapter() if hasattr(net, "disable_adapter") else nullcontext():
                return net(**inputs).logits
        finally:
            net.train(was_training)

    def loss(self, model, inputs, num_items_in_batch):
        """``distill_nll``: (1 - lam) NLL + lam T^2 KL(pi_0 at T || pi at T) on the weighted tokens."""
        from rwft.objectives.losses import distill_nll

        weights, labels = inputs["token_weights"], inputs["labels"]
        x = model_inputs(inputs)
        teacher = self.teacher_logits(model, x)
        outputs = model(**x)
        args = self.args
        loss = distill_nll(outputs.logits, teacher, labels, weights, num_items_in_batch,
                           args.distill_weight, args.distill_temperature)
        with torch.no_grad():  # the plain KL(pi_0 || pi) at T = 1 on the trained tokens, for the step log
            mask = (labels[:, 1:] != -100) & (weights[:, 1:] != 0)
            lp = torch.log_softmax(outputs.logits[:, :-1][mask].float(), -1)
            lq = torch.log_softmax(teacher[:, :-1][mask].float(), -1)
            self._kl_sum += float((lq.exp() * (lq - lp)).sum())
            self._kl_tokens += int(mask.sum())
        return loss, outputs, weights

    def log(self, logs, start_time=None):
        if "loss" in logs:
            logs["kl_to_pi0"] = self._kl_sum / max(self._kl_tokens, 1)
            self._kl_sum, self._kl_tokens = 0.0, 0
        super().log(logs, start_time)


def prepare(config: TrainConfig, tokenizer) -> skeleton.Prepared:
    """The data of ``rwft train`` weighted by the star-gate-d entry (filtered's weights)."""
    prepared = weighted.prepare(config, tokenizer)
    prepared.summary += (f" + distillation toward pi_0 (weight {config.distill_weight}, "
                         f"temperature {config.distill_temperature})")
    return prepared


def make_trainer(config: TrainConfig, model, tokenizer, prepared: skeleton.Prepared, callbacks) -> DistillTrainer:
    from rwft.presets import load_model

    teacher = None
    if not config.lora:
        teacher = load_model(config.model, config.trust_remote_code).eval().requires_grad_(False)
    return weighted.make_trainer(config, model, tokenizer, prepared, callbacks, trainer_cls=DistillTrainer,
                                 teacher=teacher)


RECIPE = skeleton.Recipe(prepare, make_trainer)
