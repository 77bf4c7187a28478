"""Reading config values: what a switch (a bool key) accepts."""

import pytest

from rlstack.config import load_config
from rlstack.errors import ConfigError


def test_switches_take_true_or_false_in_any_spelling_yaml_reads_as_one():
    cfg = load_config(
        None,
        [
            "grpo.dynamic_sampling=true",
            "grpo.kl_in_reward=False",
            "rollout.enforce_eager=null",
            "ray.loopback='true'",
        ],
    )
    assert cfg.grpo.dynamic_sampling is True and cfg.grpo.kl_in_reward is False
    assert cfg.rollout.enforce_eager is None and cfg.ray.loopback is True
    with pytest.raises(ConfigError, match="'learner.bf16' takes true or false, got 1"):
        load_config(None, ["learner.bf16=1"])
