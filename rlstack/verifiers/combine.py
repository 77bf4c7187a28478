"""Several verifiers combined into one reward, each with a weight and bound options.

A config names its verifier either as one spec string (`verifier: numeric`, weight 1) or as a
list of entries:

    verifier:
      - {name: numeric, weight: 1.0}
      - {name: think_answer, weight: 0.2}
      - {name: regex, weight: 0.5, args: {pattern: "^\\\\d+$"}, label: digits_only}

`name` is any verifier spec (see `load_verifier`); `weight` (default 1.0) multiplies its score;
`args` are keyword options passed to every call; `label` names its figures in metrics.jsonl
(`reward/<label>`), by default the built-in or entry-point name, or the function's name, with
`_2`, `_3`... added when two entries would share one. The reward of a sample is
`sum(weight * score)`, a failed call counting as `failure_score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlstack.errors import ConfigError

ENTRY_KEYS = ("name", "weight", "args", "label")
RESERVED_LABELS = ("reward_model",)  # the reward model's own figure, `reward/reward_model`


@dataclass(frozen=True)
class VerifierEntry:
    """One verifier of a combination."""

    spec: str  # built-in name, entry-point name, package.module:function or file.py:function
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    label: str = ""


def default_label(spec: str) -> str:
    """`numeric` for a name, `score` for `pkg.mod:score` or `path/x.py:score`."""
    return spec.rpartition(":")[2] or spec


def parse_verifier_entries(value: Any, where: str = "verifier") -> list[VerifierEntry]:
    """The verifiers a config value names, validated.

    Args:
        value: a spec string, or a list of mappings with the keys `name` (required), `weight`,
            `args` and `label`.
        where: the config key, for error messages (`grpo.verifier`).

    Returns:
        One entry per verifier, each with a unique label.

    Raises:
        ConfigError: one line naming the key and entry: an unknown key, a missing name, a
            weight that is not a finite number, args that are not a mapping, an empty list.
    """
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"{where}: the verifier name is empty")
        return [VerifierEntry(value, 1.0, {}, default_label(value))]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"{where}: expected a verifier name or a list of {{name, weight, args}} entries, "
            f"got {type(value).__name__}"
        )
    if not value:
        raise ConfigError(f"{where}: the verifier list is empty")

    entries, labels = [], set()
    for i, item in enumerate(value):
        entry = _parse_entry(item, f"{where}[{i}]")
        label = entry.label
        if not label:
            base = default_label(entry.spec)
            label, n = base, 1
            while label in labels:
                n += 1
                label = f"{base}_{n}"
        elif label in labels:
            raise ConfigError(f"{where}[{i}].label: {label!r} is used by an earlier entry")
        if label in RESERVED_LABELS:
            raise ConfigError(f"{where}[{i}].label: {label!r} is reserved; choose another")
        labels.add(label)
        entries.append(VerifierEntry(entry.spec, entry.weight, entry.args, label))
    return entries


def _parse_entry(item: Any, where: str) -> VerifierEntry:
    if isinstance(item, str):
        return VerifierEntry(item)
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping with name/weight/args, got {item!r}")
    unknown = [k for k in item if k not in ENTRY_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(ENTRY_KEYS)})")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: expected a verifier name, got {name!r}")
    weight = item.get("weight", 1.0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
    ):
        raise ConfigError(f"{where}.weight: expected a finite number, got {weight!r}")
    args = item.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ConfigError(f"{where}.args: expected a mapping of option names to values")
    label = item.get("label") or ""
    if not isinstance(label, str):
        raise ConfigError(f"{where}.label: expected a string, got {label!r}")
    return VerifierEntry(name, float(weight), dict(args), label)


def combine(weights: list[float], components: list[list[float]]) -> list[float]:
    """The weighted sum over verifiers of each sample's score.

    Args:
        weights: one weight per verifier.
        components: per verifier, one score per sample (failures already replaced).

    Returns:
        One combined score per sample.
    """
    n = len(components[0]) if components else 0
    return [sum(w * c[i] for w, c in zip(weights, components)) for i in range(n)]
