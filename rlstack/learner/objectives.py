"""The training objectives of a learner rank, one method per optimizer step or evaluation.

Mixed into `LearnerWorker`, which supplies the model forward helpers (`_logits`,
`_token_values`, `_sequence_scores`), `_backward` (one DeepSpeed backward and step) and `spec`.
Each training method splits its batch into `spec.grad_accum` micro-batches and weights their
losses so that the sum is the loss of the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rlstack.algorithms import (
    aggregate,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    policy_loss,
    value_loss,
)
from rlstack.learner.microbatch import split_batch


class Objectives:
    # ------------------------------------------------- language-model losses
    def _lm_loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._logits(batch["input_ids"], batch["attention_mask"])
        targets = batch["input_ids"][:, 1:]
        mask = batch["loss_mask"][:, 1:].float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return (nll * mask).sum(), mask.sum()

    def lm_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step of next-token loss on `loss_mask` tokens (token mean)."""
        self.module.train()
        total_tokens = batch["loss_mask"][:, 1:].sum().clamp(min=1)
        loss_sum = 0.0
        for micro in split_batch(batch, self.spec.grad_accum):
            loss, _ = self._lm_loss_sum(micro)
            # DeepSpeed divides by grad_accum; scaling makes the total an exact token mean.
            self._backward(loss / total_tokens * self.spec.grad_accum)
            loss_sum += loss.item()
        self.steps += 1
        return {
            "loss": loss_sum / total_tokens.item(),
            "tokens": total_tokens.item(),
            "lr": self._lr(),
        }

    @torch.no_grad()
    def lm_eval(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.module.eval()
        loss, tokens = self._lm_loss_sum(batch)
        return {"loss_sum": loss.item(), "tokens": tokens.item()}

    # ------------------------------------------------------ reward model loss
    def _pair_scores(self, batch: dict[str, torch.Tensor]):
        chosen = self._sequence_scores(batch["chosen_ids"], batch["chosen_attention_mask"])
        rejected = self._sequence_scores(batch["rejected_ids"], batch["rejected_attention_mask"])
        return chosen, rejected

    def pair_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step of the Bradley-Terry loss over chosen/rejected pairs."""
        self.module.train()
        micros = split_batch(batch, self.spec.grad_accum)
        n = batch["chosen_ids"].shape[0]
        loss_sum, correct = 0.0, 0.0
        for micro in micros:
            chosen, rejected = self._pair_scores(micro)
            loss, acc = bradley_terry_loss(chosen, rejected)
            m = chosen.shape[0]
            self._backward(loss * m / n * self.spec.grad_accum)
            loss_sum += loss.item() * m
            correct += float(acc) * m
        self.steps += 1
        return {"loss": loss_sum / n, "accuracy": correct / n, "lr": self._lr()}

    @torch.no_grad()
    def pair_eval(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.module.eval()
        chosen, rejected = self._pair_scores(batch)
        loss, _ = bradley_terry_loss(chosen, rejected)
        return {
            "loss_sum": loss.item() * chosen.shape[0],
            # A tie counts half: an untrained head (all scores equal) reads as chance.
            "correct": ((chosen > rejected).float() + 0.5 * (chosen == rejected).float())
            .sum()
            .item(),
            "pairs": float(chosen.shape[0]),
        }

    # -------------------------------------------------------------------- DPO
    def _response_logps(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """Summed logprob of each `side` response (and end token), `[batch]`."""
        ids = batch[f"{side}_ids"]
        logits = self._logits(ids, batch[f"{side}_attention_mask"])
        logp = logprobs_from_logits(logits, ids[:, 1:])
        return (logp * batch[f"{side}_loss_mask"][:, 1:]).sum(-1)

    @torch.no_grad()
    def pair_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[batch, 2]`: summed logprobs of the chosen and the rejected response."""
        self.module.eval()
        return torch.stack(
            [self._response_logps(batch, "chosen"), self._response_logps(batch, "rejected")], -1
        )

    def dpo_step(self, batch: dict[str, torch.Tensor], beta: float) -> dict[str, float]:
        """One optimizer step of the DPO loss; batch holds `ref_logps` `[batch, 2]`."""
        self.module.train()
        n = batch["chosen_ids"].shape[0]
        sums: dict[str, float] = {}
        for micro in split_batch(batch, self.spec.grad_accum):
            chosen = self._response_logps(micro, "chosen")
            rejected = self._response_logps(micro, "rejected")
            ref = micro["ref_logps"]
            loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta)
            weight = chosen.shape[0] / n
            self._backward(loss * weight * self.spec.grad_accum)
            metrics["loss"] = loss.item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * weight
        self.steps += 1
        sums["lr"] = self._lr()
        return sums

    # ----------------------------------------------------------- RL forward
    @torch.no_grad()
    def logprobs(self, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        """Logprobs of each next token, `[batch, L-1]` (zero where `mask` is 0)."""
        self.module.eval()
        logits = self._logits(batch["input_ids"], batch["attention_mask"]) / temperature
        out = logprobs_from_logits(logits, batch["input_ids"][:, 1:])
        return out * batch["mask"]

    @torch.no_grad()
    def values(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Critic values before each next token, `[batch, L-1]`."""
        self.module.eval()
        return self._token_values(batch["input_ids"], batch["attention_mask"]) * batch["mask"]

    @torch.no_grad()
    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reward-model score of each whole sequence, `[batch]`."""
        self.module.eval()
        return self._sequence_scores(batch["input_ids"], batch["attention_mask"])

    # ------------------------------------------------------------ RL update
    def policy_step(self, batch: dict[str, torch.Tensor], algo: dict[str, Any]) -> dict[str, float]:
        """One optimizer step of the clipped policy loss on a minibatch.

        `batch` holds input_ids, attention_mask, mask, advantages, old_logprobs and
        rollout_logprobs `[batch, L-1]`, and ref_logprobs when the KL is a loss term. `algo`
        holds the loss settings (clip ranges, dual clip, aggregation, entropy and KL weights).
        """
        self.module.train()
        # Micro-batches are weighted so their sum equals the loss over the whole minibatch:
        # by tokens for a token mean, by sequences for the per-sequence aggregations.
        by_tokens = algo["loss_agg"] == "token_mean"
        total = batch["mask"].sum() if by_tokens else torch.tensor(float(len(batch["mask"])))
        sums: dict[str, float] = {}
        diff_max = 0.0
        sequences = float(len(batch["mask"]))
        for micro in split_batch(batch, self.spec.grad_accum):
            logits = self._logits(micro["input_ids"], micro["attention_mask"])
            logits = logits / algo["temperature"]
            logp = logprobs_from_logits(logits, micro["input_ids"][:, 1:])
            mask = micro["mask"]
            metrics: dict[str, float] = {}
            old_logprobs = micro.get("old_logprobs")
            if old_logprobs is None:
                # One pass over the batch: this forward runs on the weights that start the
                # update, so its detached logprobs are the old policy's. It also measures the
                # engine/learner mismatch on the same tokens.
                old_logprobs = logp.detach()
                diff = (old_logprobs - micro["rollout_logprobs"]).abs() * mask
                metrics["logprob_diff_mean"] = (diff.sum() / mask.sum().clamp(min=1)).item()
                diff_max = max(diff_max, diff.max().item())
            loss, policy_metrics = policy_loss(
                logp,
                old_logprobs,
                micro["advantages"],
                mask,
                clip_low=algo["clip_low"],
                clip_high=algo["clip_high"],
                dual_clip=algo["dual_clip"],
                behaviour_logprobs=micro["rollout_logprobs"],
                is_cap=algo["is_cap"],
                agg=algo["loss_agg"],
                norm_const=algo["norm_const"],
            )
            metrics.update(policy_metrics)
            metrics["policy_loss"] = loss.item()
            entropy = entropy_from_logits(logits)
            metrics["entropy"] = masked_mean(entropy.detach(), mask).item()
            if algo["entropy_coef"]:
                loss = loss - algo["entropy_coef"] * aggregate(
                    entropy, mask, algo["loss_agg"], algo["norm_const"]
                )
            if "ref_logprobs" in micro and algo["kl_coef"] > 0 and not algo["kl_in_reward"]:
                kl = kl_estimate(logp, micro["ref_logprobs"], algo["kl_estimator"])
                kl_loss = aggregate(kl, mask, algo["loss_agg"], algo["norm_const"])
                loss = loss + algo["kl_coef"] * kl_loss
                metrics["kl_loss"] = kl_loss.item()
                if "old_logprobs" not in micro:
                    # This forward is the old policy's: report the KL to the reference per
                    # sequence (the configured estimator and k3), as the driver would have.
                    k3 = kl_estimate(old_logprobs, micro["ref_logprobs"], "k3")
                    share = len(mask) / sequences
                    for key, value in (("kl", kl.detach()), ("kl_k3", k3)):
                        per_seq = (value * mask).sum(-1).mean().item()
                        sums[key] = sums.get(key, 0.0) + per_seq * share
            part = mask.sum() if by_tokens else torch.tensor(float(len(mask)))
            weight = (part / total.clamp(min=1)).item()
            self._backward(loss * weight * self.spec.grad_accum)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * weight
        self.steps += 1
        sums["lr"] = self._lr()
        if "logprob_diff_mean" in sums:
            sums["logprob_diff_max"] = diff_max
        return sums

    def value_step(self, batch: dict[str, torch.Tensor], algo: dict[str, Any]) -> dict[str, float]:
        """One optimizer step of the clipped value loss; batch holds old_values and returns."""
        self.module.train()
        total = batch["mask"].sum().clamp(min=1)
        sums: dict[str, float] = {}
        for micro in split_batch(batch, self.spec.grad_accum):
            values = self._token_values(micro["input_ids"], micro["attention_mask"])
            loss, metrics = value_loss(
                values, micro["old_values"], micro["returns"], micro["mask"], algo["value_clip"]
            )
            weight = micro["mask"].sum() / total
            self._backward(loss * weight * self.spec.grad_accum)
            metrics["value_loss"] = loss.item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * weight.item()
        self.steps += 1
        return sums
