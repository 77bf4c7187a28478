"""Loading a config: defaults, then the YAML file, then `dotted.key=value` overrides.

Merge and type errors of OmegaConf are rewritten as one `ConfigError` that names the key and
what it takes; the merged config is then resolved and validated (`rlstack.config.checks`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import BooleanNode

from rlstack.config.checks import validate
from rlstack.config.schema import Config
from rlstack.errors import ConfigError, one_line


def _check_shapes(schema: Any, given: Any, origin: str, prefix: str = "") -> None:
    """A ConfigError naming the key where `given` does not have the shape the schema has there.

    OmegaConf reports these without the key (`int is not a subclass of SFTConfig`, `Cannot
    merge incompatible container types`): a value in place of a section, a mapping in place of a
    list or the reverse, or a dotted key written inside a YAML file. A switch (a bool key) takes
    true or false (or what YAML reads as one, such as yes/no): OmegaConf would also read a
    number as one (3 as true).
    """
    if not isinstance(given, dict):
        return
    for name, value in given.items():
        key = f"{prefix}{name}"
        if isinstance(name, str) and "." in name:
            head, _, rest = name.partition(".")
            raise ConfigError(
                f"{origin}: '{key}' is a dotted key inside a mapping; nest it instead "
                f"({head}: {{{rest}: ...}})"
            )
        if not isinstance(name, str) or name not in schema or value is None:
            continue  # unknown keys are reported by the merge
        if isinstance(value, str) and value.startswith("${"):
            continue  # an interpolation, checked when it is resolved
        node = schema[name]
        if dataclasses.is_dataclass(OmegaConf.get_type(schema, name)):
            if isinstance(value, dict):
                _check_shapes(node, value, origin, f"{key}.")
                continue
            keys = list(node.keys())
            plain = [k for k in keys if not dataclasses.is_dataclass(OmegaConf.get_type(node, k))]
            raise ConfigError(
                f"{origin}: '{key}' is a section, not a value: set keys inside it "
                f"(e.g. {key}.{(plain or keys)[0]}=...; its keys: {', '.join(keys)})"
            )
        if OmegaConf.is_list(node) and not isinstance(value, list):
            raise ConfigError(_takes_a_list(origin, key))
        if isinstance(schema._get_node(name), BooleanNode) and not (
            isinstance(value, bool) or str(value).lower() in ("true", "false")
        ):
            raise ConfigError(f"{origin}: config key '{key}' takes true or false, got {value!r}")
        if OmegaConf.is_dict(node) and not isinstance(value, dict):
            raise ConfigError(
                f"{origin}: config key '{key}' takes a mapping, e.g. {key}={{a: 1}} (or {key}.a=1)"
            )


def _takes_a_list(origin: str, key: str) -> str:
    return f"{origin}: config key '{key}' takes a list, e.g. {key}=[a,b] (one item: [a])"


def _explain(err: OmegaConfBaseException, origin: str) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if key and "is not a ListConfig" in msg:
        return _takes_a_list(origin, key)
    if "Key '" in msg and "not in" in msg:
        name = msg.split("'")[1]
        parent = key.rsplit(".", 1)[0] if key and "." in key else ""
        place = f"{parent}.{name}" if parent else name
        return f"{origin}: unknown config key '{place}'"
    return f"{origin}: config key '{key}': {msg}" if key else f"{origin}: {msg}"


def _interpolated_sections(schema: Any, node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of sections (mappings in the schema) whose value is an interpolation."""
    found = []
    for key in node.keys():
        expected = schema.get(key) if isinstance(schema, DictConfig) else None
        if OmegaConf.is_interpolation(node, key):
            if isinstance(expected, DictConfig):
                found.append(f"{prefix}{key}")
        elif isinstance(node._get_node(key), DictConfig):
            found += _interpolated_sections(expected, node._get_node(key), f"{prefix}{key}.")
    return found


def override_key(item: str) -> str:
    """The dotted key of a `dotted.key=value` override; a ConfigError naming a malformed one."""
    key, equals, _ = item.partition("=")
    if not equals or "" in key.split("."):
        raise ConfigError(f"override {item!r}: expected dotted.key=value")
    return key


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Merge defaults, the YAML file (if any) and `key=value` overrides; validate; resolve."""
    schema = OmegaConf.structured(Config)
    origin = path or "defaults"
    try:
        merged = schema
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            loaded = OmegaConf.load(path)
            if not OmegaConf.is_dict(loaded):
                raise ConfigError(f"{path}: a config file is a mapping of keys, not a list")
            _check_shapes(schema, OmegaConf.to_container(loaded), origin)
            merged = OmegaConf.merge(merged, loaded)
        for item in overrides:
            override_key(item)
            origin = f"override {item!r}"
            given = OmegaConf.from_dotlist([item])
            _check_shapes(schema, OmegaConf.to_container(given), origin)
            merged = OmegaConf.merge(merged, given)
        origin = " with ".join(filter(None, [path, "overrides" if overrides else ""])) or "defaults"
        sections = _interpolated_sections(schema, merged)
        OmegaConf.resolve(merged)
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        if not getattr(err, "full_key", None) and sections:  # `model: ${seed}` names no key
            raise ConfigError(
                f"{origin}: config key {' or '.join(map(repr, sections))} is a section; an "
                "interpolation there must name a section of the same kind "
                f"({str(err).splitlines()[0].split('. value:')[0]})"
            ) from None
        raise ConfigError(_explain(err, origin)) from None
    except Exception as err:  # the YAML parser's errors
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{origin}: cannot read config ({one_line(err)})") from None
    validate(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
