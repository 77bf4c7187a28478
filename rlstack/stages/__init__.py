"""The training stages; each takes a `StageContext` and returns its checkpoint directory."""
