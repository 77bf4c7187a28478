"""Scorers that turn responses into rewards: verifiers (and the reward model, a frozen learner)."""
