"""vLLM rollout engines as Ray actors, with in-place weight updates."""
