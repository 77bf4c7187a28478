"""What a job of `rlstack submit` carries (its runtime_env), and how files get there.

- working_dir: the current directory, minus .venv, .git, runs/, caches and what .gitignore or
  .rayignore list. Ray unpacks it on every node and starts the driver and every actor inside it,
  so a path the config names relative to this directory (a data file, a verifier .py file) means
  the same file on the cluster as for `rlstack run` from here. The config must lie inside this
  directory, outside the left-out folders, and is passed by its relative path, so paths relative
  to the config's own folder work too. A file that .gitignore or .rayignore lists does not
  travel: the run then fails on the cluster with "not found". Ray refuses a working_dir over
  512 MiB zipped: keep large data sets on storage the nodes share, named by absolute path.
- py_modules: the rlstack package this command runs from, so the nodes need the dependencies
  only, not rlstack itself, and always run the code that was submitted. A verifier .py file the
  config names outside the working_dir travels here too, copied into a package named after its
  content (`rlstack_verifier_<stem>_<hash>/<stem>.py`), and the job's command gets an override
  that names the verifier as that module; it then loads on every node without the original path.
  Such a file travels alone: it may import rlstack and installed packages, not files beside it
  (keep a verifier made of several files inside the working_dir). A verifier file inside the
  working_dir named by absolute path is renamed relative to it.
- env_vars: runtime.BASE_ENV (a value exported here wins), and RAY_OVERRIDE_JOB_RUNTIME_ENV=1
  so that the driver's own ray.init(runtime_env=...) merges with the job's instead of failing.

Why a working_dir and not absolute paths: an absolute path on this machine names nothing on a
cluster node unless both mount the same storage. A config value that names an existing local path
outside the working_dir (absolute, or relative through ../) is therefore reported as a warning
before submitting: the cluster must hold it at the same path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rlstack import runtime
from rlstack.errors import ConfigError

logger = logging.getLogger(__name__)

# Left out of the working_dir (gitignore syntax, relative to it).
EXCLUDES = [
    ".venv",
    ".git",
    "/runs/",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
]


def job_runtime_env(working_dir: Path, extra_modules: list[str] = ()) -> dict[str, Any]:
    """The job's runtime_env: the working_dir, the rlstack source (plus `extra_modules`, the
    staged verifier files) and the shared env vars."""
    package_dir = Path(__file__).resolve().parent
    env_vars = {key: os.environ.get(key, value) for key, value in runtime.BASE_ENV.items()}
    # The driver's ray.init passes env_vars of its own; Ray refuses to merge them with the job's
    # (same keys) unless told to, and then merges per variable, the driver's value winning.
    env_vars["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    return {
        "working_dir": str(working_dir),
        "py_modules": [str(package_dir), *extra_modules],
        "excludes": EXCLUDES,
        "env_vars": env_vars,
    }


def config_in(working_dir: Path, config_path: str) -> Path:
    """The config's absolute path; it must exist inside the working_dir."""
    config = Path(config_path).expanduser()
    config = (working_dir / config).resolve()
    if not config.is_file():
        raise ConfigError(f"config file {config_path} not found")
    if not config.is_relative_to(working_dir):
        raise ConfigError(
            f"config file {config_path} lies outside the current directory {working_dir}, which "
            "is what the job carries; run rlstack submit from a directory that contains it"
        )
    parts = config.relative_to(working_dir).parts
    for pattern in EXCLUDES:
        anchored = pattern.startswith("/")
        names = parts[:1] if anchored else parts
        if any(fnmatch.fnmatch(name, pattern.strip("/")) for name in names):
            raise ConfigError(
                f"config file {config_path} is in a folder the job leaves out ({pattern}); "
                "move it elsewhere under the current directory"
            )
    return config


def warn_paths_left_behind(config: Path, working_dir: Path, overrides: list[str]) -> None:
    """Warn about config values naming an existing local path the working_dir does not hold."""
    try:
        values = list(_strings(yaml.safe_load(config.read_text())))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config file {config}: {err}") from None
    values += [override.split("=", 1)[1] for override in overrides if "=" in override]

    root = working_dir.resolve()
    for value in values:
        if not value or "\n" in value or len(value) > 4096:
            continue
        path = Path(value).expanduser()
        for base in (working_dir, config.parent):
            candidate = path if path.is_absolute() else base / path
            with contextlib.suppress(OSError):
                if candidate.exists() and (
                    path.is_absolute() or not candidate.resolve().is_relative_to(root)
                ):
                    logger.warning(
                        "config value %s names a local path the job does not carry; the cluster "
                        "must hold it at that same path (or move it under %s, named relatively)",
                        value,
                        working_dir,
                    )
                    break


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def stage_verifier_files(
    config: Path, working_dir: Path, overrides: list[str], staging: Path
) -> tuple[list[str], list[str]]:
    """Copy verifier .py files that the config names outside the working_dir into `staging`.

    Each such file travels as a py_module of its own, a package named after its content
    (`rlstack_verifier_<stem>_<hash>/<stem>.py`), and the stage's verifier is renamed to that
    module by an override appended to the job's command. Files inside the working_dir travel
    with it (an absolute path to one is made relative); a file that does not exist here is left
    to the cluster (with a warning).

    Returns:
        The staged files (for py_modules) and the `<stage>.verifier=...` overrides.
    """
    from rlstack.config import load_config

    cfg = load_config(str(config), overrides)
    modules: list[str] = []
    shipped: list[str] = []
    for stage in cfg.stages:
        section = getattr(cfg, stage)
        if getattr(section, "reward_source", None) != "verifier":
            continue
        value = section.verifier
        if isinstance(value, str):
            new = _stage_spec(value, working_dir, staging, modules)
        elif isinstance(value, list):
            new = [
                dict(v, name=_stage_spec(v["name"], working_dir, staging, modules))
                if isinstance(v, dict) and isinstance(v.get("name"), str)
                else v
                for v in value
            ]
        else:
            continue
        if new != value:
            shipped.append(f"{stage}.verifier={json.dumps(new)}")
            logger.info("%s.verifier travels with the job as %s", stage, json.dumps(new))
    return modules, shipped


def _stage_spec(spec: str, working_dir: Path, staging: Path, modules: list[str]) -> str:
    """`spec` renamed to a staged module when it names a .py file outside the working_dir."""
    source, _, attribute = spec.rpartition(":")
    if not source or not (source.endswith(".py") or "/" in source or "\\" in source):
        return spec  # a built-in name or an importable module
    path = (working_dir / Path(source).expanduser()).resolve()
    if path.is_relative_to(working_dir):  # travels inside the working_dir
        inside = path.relative_to(working_dir).as_posix()
        return f"{inside}:{attribute}" if Path(source).expanduser().is_absolute() else spec
    if not path.is_file():
        logger.warning(
            "verifier file %s does not exist here; the cluster must hold it at that path", path
        )
        return spec
    # A package folder of its own: Ray's job client uploads py_modules folders, not files.
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    package = staging / f"rlstack_verifier_{stem}_{digest}"
    if not package.exists():
        package.mkdir()
        (package / "__init__.py").write_text("")
        shutil.copyfile(path, package / f"{stem}.py")
        modules.append(str(package))
    return f"{package.name}.{stem}:{attribute}"
