"""Submit an rlstack run to a Ray cluster as a Ray job.

    rlstack submit configs/grpo.yaml --address http://HEAD:8265 --run-dir /shared/runs/grpo \
        grpo.steps=200
    rlstack submit --resume /shared/runs/grpo --address http://HEAD:8265 [ray.start_timeout_s=900]

The job runs `python -m rlstack run --run-dir DIR CONFIG [dotted.key=value ...]` on the cluster's
head node: the same pipeline as a local run, its driver connected to the cluster it runs on
(Ray sets RAY_ADDRESS for a job). `--address` is the dashboard URL (the Jobs API), not the GCS
address. The command streams the job's logs here and exits 0 when the job succeeded.

With `--resume RUN_DIR` (and no CONFIG) the job runs `python -m rlstack run --resume RUN_DIR
[overrides]` instead: a stopped run continues on the cluster from its newest saved state.
RUN_DIR is the run directory on the cluster's shared storage, as the stopped run wrote it: an
absolute path (a relative one only when it exists here; the job gets it made absolute). The job
checks the overrides (only keys that cannot change the run's results, rlstack.resume). When
RUN_DIR also exists on this machine (a one-machine cluster, or the same storage mounted here)
the run is checked here first, before anything is submitted. Submit from the directory the
first job was submitted from: the working_dir travels again, and relative paths in the run's
config (data, verifier files) are read from it.

What the job carries (the working directory, the rlstack source, verifier files named outside
the working directory, environment variables): rlstack.job_payload.

The run directory is written on the cluster, not here, and nothing is copied back. A relative
--run-dir (or none: the run's default) lands in the job's unpacked copy of the working_dir on the
head node, a Ray cache that is deleted when unused; checkpoints written by actors on other nodes
land on those nodes. Pass an absolute --run-dir on storage that every node mounts.

A verifier file that travelled as a package of its own (rlstack.job_payload) is named by that
package in the run's config.yaml; a resume does not carry it again, and is refused when RUN_DIR
is readable here unless the working_dir holds that package
(`rlstack_verifier_<stem>_<hash>/<stem>.py`).

Authentication (Ray 2.60): a cluster started with RAY_AUTH_MODE=token, or with the variable unset
while a token exists (~/.ray/auth_token), demands a token. This client sends one only when
RAY_AUTH_MODE=token is in the environment before ray is imported, reading RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; a refused token is reported as an RLStackError. See
cluster/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import secrets
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rlstack.errors import ConfigError, RLStackError
from rlstack.job_payload import (
    config_in,
    job_runtime_env,
    stage_verifier_files,
    warn_paths_left_behind,
)

logger = logging.getLogger(__name__)

# Ray reads these before the address argument; submit honours --address only.
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
CONNECT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 1.0


def submit_job(
    config_path: str | None,
    address: str,
    overrides: list[str],
    run_dir: str | None,
    wait: bool = True,
    timeout_s: float | None = None,
    resume: str | None = None,
) -> int:
    """Submit `rlstack run` for a config (or `rlstack run --resume` for a stopped run) as a Ray
    job and, by default, follow it to the end.

    Args:
        config_path: the run's config file; it must lie inside the current directory. None
            with `resume`.
        address: the cluster's dashboard URL, e.g. http://127.0.0.1:8265.
        overrides: `dotted.key=value` config overrides, passed on to `rlstack run`.
        run_dir: the run directory on the cluster (see the module docstring), or None for the
            run's default. None with `resume`.
        wait: follow the job, streaming its logs to stdout, until it ends.
        timeout_s: stop the job and fail when it has not ended after this many seconds.
        resume: the directory of a stopped run on the cluster's shared storage, to continue
            instead of starting a run from a config.

    Returns:
        A process exit code: 0 when the job succeeded (or was submitted, with wait=False),
        1 when it failed, was stopped or timed out, 130 when interrupted (the job keeps running).

    Raises:
        RLStackError: the config is missing or unreadable, both or neither of a config and
            `resume` are given, the run to resume is refused here, an override is malformed,
            or the cluster cannot be reached or refuses the job.
    """
    working_dir = Path.cwd().resolve()
    _check_mode(config_path, run_dir, resume)
    for override in overrides:
        if "=" not in override or override.startswith("="):
            raise ConfigError(f"override {override!r} is not of the form dotted.key=value")
    if resume is not None:
        return _submit_resume(resume, working_dir, address, overrides, wait, timeout_s)

    config = config_in(working_dir, config_path)
    warn_paths_left_behind(config, working_dir, overrides)
    if run_dir is None or not Path(run_dir).is_absolute():
        logger.warning(
            "run directory %s is relative: on the cluster it lands inside the job's copy of the "
            "working directory and is not kept; pass an absolute --run-dir on shared storage",
            run_dir or "(the run's default)",
        )
    _check_reachable(address)

    client = _connect(address)
    with tempfile.TemporaryDirectory(prefix="rlstack-submit-") as staging:
        modules, shipped = stage_verifier_files(config, working_dir, overrides, Path(staging))
        relative_config = config.relative_to(working_dir).as_posix()
        entrypoint = job_entrypoint(relative_config, run_dir, [*overrides, *shipped])
        runtime_env = job_runtime_env(working_dir, modules)
        job_id = _submit(client, address, config.stem, entrypoint, runtime_env)
    return _await(client, job_id, address, wait, timeout_s)


def _submit_resume(
    resume: str,
    working_dir: Path,
    address: str,
    overrides: list[str],
    wait: bool,
    timeout_s: float | None,
) -> int:
    """`submit --resume RUN_DIR`: check the run here when RUN_DIR is readable, then submit."""
    run_dir = _resume_dir(resume)
    if Path(run_dir).exists():
        _check_resumable(Path(run_dir), working_dir, overrides)
    else:
        logger.info(
            "run directory %s is not on this machine; the job checks it on the cluster", run_dir
        )
    _check_reachable(address)

    client = _connect(address)
    entrypoint = resume_entrypoint(run_dir, overrides)
    name = f"resume-{Path(run_dir).name}"
    job_id = _submit(client, address, name, entrypoint, job_runtime_env(working_dir))
    return _await(client, job_id, address, wait, timeout_s)


def _check_mode(config_path: str | None, run_dir: str | None, resume: str | None) -> None:
    """Exactly one of CONFIG and --resume; --run-dir only with CONFIG."""
    if resume is not None and not resume.strip():
        raise ConfigError("submit --resume: give the run directory to continue")
    if resume is None and config_path is None:
        raise ConfigError(
            "submit: give a CONFIG file to run, or --resume RUN_DIR to continue a stopped run"
        )
    if resume is not None and config_path is not None:
        raise ConfigError(
            f"submit --resume: a config file ({config_path}) cannot be given; a resumed run "
            "uses RUN_DIR/config.yaml"
        )
    if resume is not None and run_dir is not None:
        raise ConfigError(
            "submit --resume: --run-dir cannot be given; a resumed run stays in RUN_DIR"
        )


def _resume_dir(resume: str) -> str:
    """RUN_DIR as the job gets it: absolute (a relative one only when it exists here)."""
    path = Path(resume).expanduser()
    if path.is_absolute():
        return str(path)
    if not path.exists():
        raise ConfigError(
            f"submit --resume: {resume} is a relative path that does not exist here; give the "
            "run directory's absolute path on the cluster's shared storage"
        )
    return str(path.absolute())


def _check_resumable(run_dir: Path, working_dir: Path, overrides: list[str]) -> None:
    """Refuse here what the job would refuse at its start: RUN_DIR is not a run directory, the
    run finished or saved nothing, an override could change its results; and a verifier file
    the first job carried as a package of its own, which this job does not carry."""
    from rlstack.resume import resume_config, resume_point
    from rlstack.verifiers import parse_verifier_entries

    cfg = resume_config(run_dir, overrides)
    resume_point(run_dir, cfg)
    for stage in cfg.stages:
        section = getattr(cfg, stage)
        if getattr(section, "reward_source", None) != "verifier":
            continue
        for spec in (e.spec for e in parse_verifier_entries(section.verifier, f"{stage}.verifier")):
            module = spec.rpartition(":")[0] or spec
            package, _, stem = module.partition(".")
            if not package.startswith("rlstack_verifier_") or not stem:
                continue
            copy = working_dir / package / f"{stem}.py"
            if not copy.is_file():
                raise ConfigError(
                    f"submit --resume: {stage}.verifier {spec} is a verifier file that only the "
                    f"first job carried (as package {package}); copy that same file to {copy} "
                    "(the package name ends in a hash of its content) and submit again"
                )


def _submit(client: Any, address: str, name: str, entrypoint: str, runtime_env: dict) -> str:
    """Submit the job; returns its id (`rlstack-<name>-<time>-<random>`)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", name)
    submission_id = f"rlstack-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    with _client_errors(address):
        job_id = client.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id
        )
    logger.info("submitted job %s to %s: %s", job_id, address, entrypoint)
    return job_id


def _await(client: Any, job_id: str, address: str, wait: bool, timeout_s: float | None) -> int:
    """Follow the submitted job to its end (or not, with wait=False); returns the exit code."""
    if not wait:
        logger.info("follow it with: ray job logs --follow %s --address %s", job_id, address)
        return 0

    try:
        return _follow(client, job_id, address, timeout_s)
    except KeyboardInterrupt:
        logger.warning(
            "stopped following job %s; it keeps running (ray job stop %s --address %s)",
            job_id,
            job_id,
            address,
        )
        return 130


def job_entrypoint(config: str, run_dir: str | None, overrides: list[str]) -> str:
    """The shell command the job runs: `python -m rlstack run` with the same arguments."""
    args = ["python", "-m", "rlstack", "run"]
    if run_dir is not None:
        args += ["--run-dir", run_dir]
    args += [config, *overrides]
    return shlex.join(args)


def resume_entrypoint(run_dir: str, overrides: list[str]) -> str:
    """The shell command a resuming job runs: `python -m rlstack run --resume RUN_DIR`."""
    return shlex.join(["python", "-m", "rlstack", "run", "--resume", run_dir, *overrides])


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rlstack submit` to a (sub)parser; `run_submit` consumes them."""
    parser.usage = (
        "%(prog)s (CONFIG | --resume RUN_DIR) --address URL [--run-dir DIR] [--no-wait] "
        "[--timeout S] [dotted.key=value ...]"
    )
    config = parser.add_argument(
        "config",
        metavar="CONFIG",
        default=None,
        help="the run's config file, inside the current directory (not with --resume)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue a stopped run on the cluster from its newest saved state, with its own "
        "config: RUN_DIR is its run directory on the cluster's shared storage (absolute)",
    )
    parser.add_argument(
        "--address",
        required=True,
        help="the cluster's dashboard URL (Jobs API), e.g. http://127.0.0.1:8265",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="run directory on the cluster: an absolute path on storage every node mounts",
    )
    parser.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="return once the job is submitted instead of following its logs",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the job before stopping it (default: no limit)",
    )
    overrides = parser.add_argument(
        "overrides",
        nargs="+",
        default=[],
        metavar="dotted.key=value",
        help="config overrides (optional), passed on to `rlstack run`; with --resume only keys "
        "that cannot change the run's results",
    )
    # note: nargs="*" would let argparse consume an empty list right after CONFIG and reject
    # overrides given after the options; "+" made optional matches them wherever they follow.
    # CONFIG is optional the same way (nargs="?" would take a lone CONFIG for an override);
    # with --resume the first override lands in it, and rlstack.cli.main moves it back.
    overrides.required = False
    config.required = False


def run_submit(args: argparse.Namespace) -> int:
    """Run `rlstack submit` from parsed arguments; returns the exit code."""
    return submit_job(
        args.config,
        args.address,
        list(args.overrides),
        args.run_dir,
        wait=args.wait,
        timeout_s=args.timeout,
        resume=args.resume,
    )


def _check_reachable(address: str) -> None:
    """Fail fast (one line) when the address is not an http(s) URL or nothing answers there."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RLStackError(
            f"address {address!r} is not the dashboard URL of a Ray cluster "
            "(expected http://HOST:PORT, usually port 8265)"
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise RLStackError(f"cannot reach the Ray cluster at {address}: {err}") from None


def _connect(address: str) -> Any:
    """A JobSubmissionClient for exactly this address (the address env vars are ignored)."""
    from ray.job_submission import JobSubmissionClient

    hidden = {key: os.environ.pop(key) for key in ADDRESS_ENV_VARS if key in os.environ}
    try:
        with _client_errors(address):
            return JobSubmissionClient(address)
    finally:
        os.environ.update(hidden)


@contextlib.contextmanager
def _client_errors(address: str) -> Iterator[None]:
    """Turn the Jobs API client's connection and request errors into one-line RLStackErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        first_line = str(err).strip().splitlines()[0]
        raise RLStackError(
            f"the Ray cluster at {address} refused the request ({first_line}); set "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token"
        ) from None
    except (ConnectionError, requests.RequestException) as err:
        raise RLStackError(f"cannot talk to the Ray cluster at {address}: {err}") from None
    except (RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise RLStackError(f"the Ray cluster at {address} refused the job: {first_line}") from None


def _follow(client: Any, job_id: str, address: str, timeout_s: float | None) -> int:
    """Stream the job's logs to stdout until it ends; return 0 when it succeeded."""
    import aiohttp
    from ray.job_submission import JobStatus

    start = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(_print_logs(client, job_id), timeout_s))
    except asyncio.TimeoutError:
        pass
    except (RuntimeError, OSError, aiohttp.ClientError) as err:
        logger.warning("log stream of job %s broke off (%s); polling its status", job_id, err)

    with _client_errors(address):
        status = client.get_job_status(job_id)
        while not status.is_terminal():
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                client.stop_job(job_id)
                logger.error("job %s did not end within %.0f s; stopped it", job_id, timeout_s)
                return 1
            time.sleep(POLL_INTERVAL_S)
            status = client.get_job_status(job_id)
        info = client.get_job_info(job_id)

    elapsed = time.monotonic() - start
    if status == JobStatus.SUCCEEDED:
        logger.info("job %s succeeded after %.1f s", job_id, elapsed)
        return 0
    lines = [line.strip() for line in (info.message or "").splitlines() if line.strip()]
    reason = lines[0] if lines else "no message"
    if len(lines) > 1:
        reason += f" ... {lines[-1]}"
    logger.error("job %s %s: %s", job_id, status.value, reason)
    return 1


async def _print_logs(client: Any, job_id: str) -> None:
    """Copy the job's log stream to stdout as it arrives; returns when the job has ended."""
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
