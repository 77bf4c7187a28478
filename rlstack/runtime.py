"""Process-level settings shared by the driver and every Ray actor.

The environment variables here keep Ray, vLLM and torch.distributed on the loopback interface
when running on one machine, turn off usage reporting, and keep idle OpenMP threads from
spinning (busy-waiting threads in one process slow every other process on a small CPU box).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

logger = logging.getLogger(__name__)

# Applied with setdefault: a value the user exported wins.
BASE_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}

# Only for single-machine runs: every service on 127.0.0.1. Ray reads its switch when it is
# first imported, so `apply_env` must run before anything imports ray.
LOOPBACK_ENV: dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_HOST_IP": "127.0.0.1",
    "MASTER_ADDR": "127.0.0.1",
}


def apply_env(loopback: bool) -> dict[str, str]:
    """Set the shared environment in this process; return what actors should inherit."""
    env = dict(BASE_ENV)
    if loopback:
        env.update(LOOPBACK_ENV)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in env}


_reaper = None  # the watchdog of this process's local Ray instances (rlstack.reaper)


def _watch_local_ray(started: float) -> None:
    """Have Ray's processes ended if this process dies without shutting Ray down (SIGKILL,
    out of memory); one watchdog covers every local instance this process starts."""
    global _reaper
    if _reaper is None or _reaper.poll() is not None:
        from rlstack import reaper

        _reaper = reaper.start(since=started)


def init_ray(address: str | None, num_cpus: float | None, loopback: bool) -> dict[str, str]:
    """Connect to a Ray cluster, or start a private local one.

    Args:
        address: a cluster address (`auto`, `ray://host:port`, `host:port`), or None to start a
            local Ray instance that belongs to this process only. Inside a Ray job (RAY_ADDRESS
            set by the cluster) the job's cluster is used.
        num_cpus: logical CPUs of a local instance (None: the machine's cores).
        loopback: bind a local instance's services to 127.0.0.1. When joining a cluster the
            loopback settings apply only if this node itself is 127.0.0.1 (a one-machine test
            cluster), never on a multi-node cluster.

    Returns:
        The environment variables that every actor is started with.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address is None:
            apply_env(loopback)
            # "local": a new instance even when another one on this machine is on record.
            kwargs: dict[str, Any] = {
                "address": "local",
                "num_cpus": num_cpus,
                "include_dashboard": False,
            }
            if loopback:
                kwargs["_node_ip_address"] = "127.0.0.1"
            logger.info("starting a local Ray instance (num_cpus=%s)", num_cpus)
            started = time.time()
            ray.init(**kwargs)
            _watch_local_ray(started)
        else:
            logger.info("connecting to Ray at %s", address)
            ray.init(address=address)
    on_loopback = address is None and loopback
    on_loopback = on_loopback or ray.util.get_node_ip_address() == "127.0.0.1"
    return apply_env(on_loopback)
