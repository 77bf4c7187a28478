"""The run configuration.

`schema` holds every key with its type, default and meaning (the dataclasses a YAML file
mirrors); `load` merges defaults, a file and overrides; `checks` validates the values.
"""

from rlstack.config.load import load_config, to_yaml
from rlstack.config.schema import Config, DataConfig, OptimConfig, RLConfig

__all__ = ["Config", "DataConfig", "OptimConfig", "RLConfig", "load_config", "to_yaml"]
