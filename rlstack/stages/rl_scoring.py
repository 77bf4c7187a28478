"""Rewards of a rollout: a reward model (a learner or a remote server), verifiers, or both."""

from __future__ import annotations

from typing import Any

import torch

from rlstack.scorers.reward_http import RemoteRewardModel
from rlstack.stages.batches import response_text
from rlstack.stages.rl_roles import RLRoles
from rlstack.stages.rl_samples import Rollout


def score_rollout(
    rollout: Rollout,
    roles: RLRoles,
    tokenizer: Any,
    max_prompt: int,
    reward_model_weight: float,
) -> tuple[torch.Tensor, dict[str, int], dict[str, list[float]]]:
    """Rewards `[samples]`, verifier failures by kind, and each reward part per sample.

    The reward is the reward model's score (no verifier), or the verifiers' weighted sum plus
    `reward_model_weight` x the reward model's score. The reward model is a learner scoring the
    rollout's batch, or a remote server given the texts (`max_prompt`: the prompts' token
    limit)."""
    rm_scores = None
    if isinstance(roles.reward_model, RemoteRewardModel):
        # Texts that the server turns back into this rollout's exact token ids.
        eos = tokenizer.eos_token_id
        ids = [s["response_ids"] for s in rollout.samples]
        remote = roles.reward_model.score(
            [rollout.rows[s["prompt_index"]]["prompt"] for s in rollout.samples],
            [response_text(tokenizer, r) for r in ids],
            [bool(r) and r[-1] == eos for r in ids],
            max_prompt,
        )
        rm_scores = torch.tensor(remote, dtype=torch.float32)
        if roles.verifier is None:
            return rm_scores, {}, {}
    elif roles.reward_model is not None:
        batch = rollout.learner_batch(tokenizer.pad_token_id)
        rm_scores = roles.reward_model.infer("scores", batch)
        if roles.verifier is None:
            return rm_scores, {}, {}
    items = []
    for s in rollout.samples:
        row = rollout.rows[s["prompt_index"]]
        extras = {k: v for k, v in row.items() if k not in ("prompt", "reference", "response")}
        items.append(
            {
                "prompt": row["prompt"],
                "response": tokenizer.decode(s["response_ids"], skip_special_tokens=True),
                "reference": str(row.get("reference", "")),
                "extras": extras,
            }
        )
    result = roles.verifier.score(items)
    scores = torch.tensor(result.scores, dtype=torch.float32)
    components = dict(result.components)
    if rm_scores is not None:
        scores = scores + reward_model_weight * rm_scores.float()
        components["reward_model"] = rm_scores.tolist()
    return scores, result.failures, components
