"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rlstack import runtime

# Ray reads its bind-to-loopback switch when first imported: set it before any test imports ray.
runtime.apply_env(loopback=True)

RAY_START_TIMEOUT_S = 180.0
RAY_STOP_GRACE_S = 10.0
# Every port a Ray head opens, chosen here so that no default port is shared with another cluster.
RAY_PORT_OPTIONS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


# A custom resource every test node offers once: actors asking for one land on distinct nodes.
NODE_SLOT = "verifier_slot"


@pytest.fixture(scope="session")
def ray_head() -> Iterator[dict[str, str]]:
    """A private Ray head on 127.0.0.1 with the Jobs API; yields its dashboard URL ("address"),
    its GCS address ("gcs") and its environment ("env", for nodes that join it).

    Started with `ray start --head --block` in a temp dir of its own, every port explicit (worker
    ports picked by the OS), 2 logical CPUs and one NODE_SLOT, the loopback env and
    RAY_AUTH_MODE=disabled. The
    auth mode must be explicit: left unset, `ray start` turns token auth on whenever
    ~/.ray/auth_token exists (any local ray.init() writes one), while this process's Jobs client
    sends a token only if RAY_AUTH_MODE=token was set before ray was first imported. Stopped,
    with every process it started, at the end of the session or when start-up fails. Start-up
    takes 6-20 s on 2 shared cores; the idle head holds about 1.5 GiB RSS.
    """
    temp_dir = tempfile.mkdtemp(prefix="rlstack-ray-")
    ports = dict(zip(RAY_PORT_OPTIONS, free_ports(len(RAY_PORT_OPTIONS)), strict=True))
    env = {
        **os.environ,
        **runtime.LOOPBACK_ENV,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # A job's `python` is the first on the cluster's PATH: this test run's interpreter.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        f'--resources={{"{NODE_SLOT}": 1}}',
        f"--temp-dir={temp_dir}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
        *(f"--{option}={port}" for option, port in ports.items()),
    ]
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=temp_dir
        )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_for_jobs_api(address, head, log_path)
        yield {"address": address, "gcs": f"127.0.0.1:{ports['port']}", "env": env}
    finally:
        stop_process_tree(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_jobs_address(ray_head: dict[str, str]) -> str:
    """The dashboard URL (Jobs API) of the private loopback Ray head."""
    return ray_head["address"]


# A worker node for the loopback head. `ray start --address` cannot join on loopback: it refuses
# to join while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the loopback switch), and with it on it
# rewrites a 127.0.0.1 head address to the machine's outward IP. This starts the node through
# Ray's own node API (as ray.cluster_utils does for its multi-node tests on one machine).
WORKER_NODE_SCRIPT = """
import json, signal, sys, time
import ray._private.node, ray._private.parameter
args = json.loads(sys.argv[1])
params = ray._private.parameter.RayParams(node_ip_address="127.0.0.1", **args)
node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
def stop(*_):
    node.kill_all_processes(check_alive=False, allow_graceful=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("node started", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture
def second_node(ray_head: dict, tmp_path: Path) -> Iterator[None]:
    """A worker node (1 CPU, one NODE_SLOT) joined to the loopback head for one test.

    Every port explicit and on 127.0.0.1, a temp dir of its own; returns once the head counts
    two NODE_SLOTs; stopped with every process it started at teardown.
    """
    names = [
        "node_manager_port",
        "object_manager_port",
        "dashboard_agent_listen_port",
        "metrics_agent_port",
        "runtime_env_agent_port",
        "metrics_export_port",
    ]
    args = dict(zip(names, free_ports(len(names)), strict=True))
    args.update(
        gcs_address=ray_head["gcs"],
        num_cpus=1,
        num_gpus=0,
        resources={NODE_SLOT: 1},
        temp_dir=tempfile.mkdtemp(prefix="rlstack-ray-node-"),  # short: holds unix sockets
        min_worker_port=0,
        max_worker_port=0,
        object_store_memory=150 * 1024**2,
        include_log_monitor=False,
    )
    log_path = tmp_path / "ray-node.log"
    with open(log_path, "w") as log:
        node = subprocess.Popen(
            [sys.executable, "-c", WORKER_NODE_SCRIPT, json.dumps(args)],
            env=ray_head["env"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_for_slots(ray_head["address"], 2, node, log_path)
        yield
    finally:
        stop_process_tree(node)
        shutil.rmtree(args["temp_dir"], ignore_errors=True)


def wait_for_slots(address: str, count: int, node: subprocess.Popen, log_path: Path) -> None:
    """Return once the cluster's alive nodes offer `count` NODE_SLOTs (read from the dashboard)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + RAY_START_TIMEOUT_S
    while time.monotonic() < deadline and node.poll() is None:
        try:
            with opener.open(f"{address}/api/v0/nodes", timeout=5) as response:
                nodes = json.loads(response.read())["data"]["result"]["result"]
            alive = [n for n in nodes if n.get("state") == "ALIVE"]
            slots = sum(n.get("resources_total", {}).get(NODE_SLOT, 0) for n in alive)
            if slots >= count:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(1.0)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the second Ray node did not join {address}:\n{tail}")


@pytest.fixture
def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listened on when the test started."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct ports on 127.0.0.1 that nothing listens on now (held open together to pick)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_jobs_api(address: str, head: subprocess.Popen, log_path: Path) -> None:
    """Return once GET /api/jobs/ answers 200; raise with the start-up log when it never does."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + RAY_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            break
        try:
            with opener.open(f"{address}/api/jobs/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the Ray head at {address} did not become ready:\n{tail}")


def stop_process_tree(head: subprocess.Popen) -> None:
    """Stop `ray start --block` and every process it started.

    SIGTERM to the blocking `ray start` makes it stop its cluster (about 3 s; SIGINT does not);
    whatever outlives the grace period is killed by its pid.
    """
    try:
        procs = psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    head.terminate()
    try:
        head.wait(timeout=RAY_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    _, alive = psutil.wait_procs(procs, timeout=1)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[dict[str, str]]:
    """A private in-process Ray on 127.0.0.1 (2 logical CPUs); yields the actors' env vars."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rlstack-ray-local-")
    runtime.apply_env(loopback=True)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        address="local",
    )
    try:
        yield runtime.apply_env(loopback=True)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
