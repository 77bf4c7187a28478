"""The verifier pool on a real Ray: deadlines, failures by kind, load spreading, async and batched
verifiers, weighted combination, entry points in the workers, and a GRPO run whose verifier hangs.

The only fakes are the failures the plug-in files below inject (a call that hangs, one that
holds the GIL, one that kills its process, one that raises).
"""

import math
import os
import textwrap
import time

import psutil
import pytest
from test_verifier_api import make_distribution
from tiny_config import TINY

from rlstack.config import load_config
from rlstack.driver import run_pipeline
from rlstack.metrics import read_metrics
from rlstack.scorers.verifier import VerifierScorer
from rlstack.scorers.verifier_worker import VerifierWorker
from rlstack.verifiers.combine import VerifierEntry

PLUGIN = textwrap.dedent(
    """
    import asyncio, os, re, time
    from rlstack.verifiers import batched

    def trouble(prompt, response, reference, **extras):
        if response == "hang":
            time.sleep(3600)
        if response == "gil":  # catastrophic backtracking: C code that never releases the GIL
            re.match(r"(a+)+$", "a" * 64 + "b")
        if response == "die":
            os._exit(3)
        if response == "interrupt":
            raise KeyboardInterrupt  # Ray reports it as a cancelled task, in colour
        if response == "raise":
            raise ValueError("boom")
        if response == "nan":
            return float("nan")
        if response == "text":
            return "yes"
        return 1.0 if response == reference else 0.0

    def timed(prompt, response, reference, **extras):
        time.sleep(float(extras.get("delay", 0.0)))
        return 1.0, {"finished": time.time(), "pid": os.getpid()}

    async def waits(prompt, response, reference, delay=0.0, **extras):
        await asyncio.sleep(float(extras.get("sleep", delay)))
        return 1.0 if response == reference else 0.0

    @batched
    def lengths(prompts, responses, references, scale=1.0, bonus=None, **extras):
        return [
            (scale * len(r) + (b or 0), {"batch": len(responses)})
            for r, b in zip(responses, bonus)
        ]

    @batched
    def short_batch(prompts, responses, references, **extras):
        return [1.0]
    """
)


def items(responses, reference="7", **extras):
    return [
        {"prompt": "p", "response": r, "reference": reference, "extras": dict(extras)}
        for r in responses
    ]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugins") / "plugin.py"
    path.write_text(PLUGIN)
    return str(path)


@pytest.fixture
def make_pool(ray_local):
    pools = []

    def make(verifier, **kwargs):
        kwargs.setdefault("failure_score", -1.0)
        kwargs.setdefault("env_vars", ray_local)
        pool = VerifierScorer(verifier, **kwargs).start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


def gone(pid, within_s=10.0):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("hang", ["hang", "gil"])
def test_hung_call_times_out_and_its_worker_is_killed_and_replaced(make_pool, plugin, hang):
    pool = make_pool(f"{plugin}:trouble", num_workers=2, timeout_s=1.0, grace_s=0.5)
    before = set(pool.pids())
    t0 = time.monotonic()
    result = pool.score(items(["7", "8", hang, "7", "7", "8", "7"]))
    elapsed = time.monotonic() - t0

    assert result.scores == [1.0, 0.0, -1.0, 1.0, 1.0, 0.0, 1.0]
    assert result.failures == {"timeout": 1}
    assert result.outcomes["trouble"][2].failure == "timeout"
    assert elapsed < 8.0  # one deadline (1 s + 0.5 s grace) and a worker start, not an hour
    assert pool.restarts == 1
    killed = before - set(pool.pids())
    assert len(killed) == 1 and gone(killed.pop())  # the stuck process is really gone

    # The pool keeps working with the replacement worker.
    assert pool.score(items(["7", "8"])).scores == [1.0, 0.0]


def test_raising_nan_non_numbers_and_dead_workers_are_counted_by_kind(make_pool, plugin):
    pool = make_pool(f"{plugin}:trouble", num_workers=2, timeout_s=5.0)
    result = pool.score(items(["raise", "7", "nan", "text", "die", "8", "interrupt"]))
    assert result.scores == [-1.0, 1.0, -1.0, -1.0, -1.0, 0.0, -1.0]
    assert result.failures == {"raised": 1, "nan": 1, "not_a_number": 1, "crashed": 2}
    assert result.outcomes["trouble"][0].message == "ValueError: boom"
    interrupted = result.outcomes["trouble"][6]
    assert interrupted.failure == "crashed" and "ray::VerifierWorker" in interrupted.message
    assert "\x1b" not in interrupted.message  # without Ray's terminal colours
    assert all(math.isfinite(s) for s in result.scores)


def test_a_slow_sample_does_not_hold_up_the_others(make_pool, plugin):
    pool = make_pool(f"{plugin}:timed", num_workers=2, timeout_s=10.0)
    batch = items(["7"] * 40)
    batch[0]["extras"]["delay"] = 3.0  # the first chunk's first sample is slow
    t0 = time.time()
    result = pool.score(batch)
    details = [o.details for o in result.outcomes["timed"]]

    slow_done = details[0]["finished"]
    others = [d["finished"] for d in details[1:]]
    assert slow_done - t0 >= 3.0
    # Everything outside the slow sample's chunk finished on the other worker long before it.
    assert sum(t < slow_done - 1.0 for t in others) >= 30
    assert result.failures == {}


def test_pool_is_much_faster_than_serial_for_a_slow_verifier(make_pool, plugin):
    batch = items(["7"] * 16, delay=0.25)
    entry = [VerifierEntry(f"{plugin}:timed", label="timed")]

    t0 = time.monotonic()
    serial = VerifierWorker(entry, timeout_s=10.0).score_all(0, batch)
    serial_s = time.monotonic() - t0

    pool = make_pool(entry, num_workers=4, timeout_s=10.0)
    t0 = time.monotonic()
    result = pool.score(batch)
    pool_s = time.monotonic() - t0

    assert [o.score for o in serial] == result.scores == [1.0] * 16
    assert serial_s >= 4.0
    assert pool_s < 0.5 * serial_s, (pool_s, serial_s)
    assert len({o.details["pid"] for o in result.outcomes["timed"]}) == 4


def test_async_verifier_runs_samples_concurrently_and_is_cancelled_at_its_deadline(
    make_pool, plugin
):
    pool = make_pool(
        [{"name": f"{plugin}:waits", "args": {"delay": 0.5}}], num_workers=1, timeout_s=2.0
    )
    batch = items(["7", "8"] * 6)
    batch[3]["extras"]["sleep"] = 3600  # cancelled by asyncio.wait_for, no worker killed
    t0 = time.monotonic()
    result = pool.score(batch)
    elapsed = time.monotonic() - t0

    expected = [1.0, 0.0] * 6
    expected[3] = -1.0
    assert result.scores == expected
    assert result.failures == {"timeout": 1}
    assert elapsed < 4.0  # 12 x 0.5 s would take 6 s one after another
    assert pool.restarts == 0


def test_batched_verifier_gets_lists_columns_and_options(make_pool, plugin):
    pool = make_pool(
        [
            {"name": f"{plugin}:lengths", "args": {"scale": 0.5}},
            {"name": f"{plugin}:short_batch"},
        ],
        num_workers=2,
    )
    batch = items(["a", "abcd", "ab", "abcdef"])
    batch[1]["extras"]["bonus"] = 10
    result = pool.score(batch)

    assert result.components["lengths"] == [0.5, 12.0, 1.0, 3.0]
    assert result.components["short_batch"] == [-1.0] * 4  # one result for two samples
    assert result.failures == {"bad_batch": 4}
    assert {o.details["batch"] for o in result.outcomes["lengths"]} == {2}  # 2 chunks of 2
    assert result.scores == [-0.5, 11.0, 0.0, 2.0]


def test_weighted_combination_matches_hand_computed_rewards(make_pool, plugin):
    pool = make_pool(
        [
            {"name": "numeric", "weight": 0.5},
            {"name": "exact_match", "weight": 2.0},
            {"name": f"{plugin}:trouble", "weight": -1.0, "label": "trouble"},
        ],
        failure_score=-3.0,
        num_workers=2,
    )
    batch = items(["7", "The answer is 7", "8", "raise"], reference="7")
    result = pool.score(batch)
    # numeric: 1, 1, 0, 0   exact_match: 1, 0, 0, 0   trouble: 1, 0, 0, failed (-3)
    assert result.components == {
        "numeric": [1.0, 1.0, 0.0, 0.0],
        "exact_match": [1.0, 0.0, 0.0, 0.0],
        "trouble": [1.0, 0.0, 0.0, -3.0],
    }
    assert result.scores == [0.5 + 2.0 - 1.0, 0.5, 0.0, 3.0]
    assert result.failures == {"raised": 1}


def test_in_process_scoring_gives_the_pools_scores_and_failures_without_workers(
    make_pool, plugin, monkeypatch
):
    """`num_workers=0` (the loop's `verifier_workers: 0`): the same verifiers, outcomes and
    failure kinds as the pool, scored in this process, with no actor started."""
    entries = [
        {"name": "numeric", "weight": 0.5},
        {"name": f"{plugin}:trouble", "weight": -1.0, "label": "trouble"},
        {"name": f"{plugin}:waits", "label": "waits"},
        {"name": f"{plugin}:lengths", "args": {"scale": 0.5}, "label": "lengths"},
        {"name": f"{plugin}:timed", "label": "timed"},
    ]
    batch = items(["7", "The answer is 7", "8", "raise", "nan", "text"], reference="7")
    batch[4]["extras"] = {"sleep": 5.0, "delay": 1.5}  # async: past its deadline; sync: late
    for row in batch:
        row["extras"].setdefault("bonus", 1)
    pooled = make_pool(entries, failure_score=-3.0, num_workers=2, timeout_s=1.0)

    def no_actors(*args, **kwargs):
        raise AssertionError("in-process scoring started a Ray actor")

    monkeypatch.setattr("ray.remote", no_actors)
    local = VerifierScorer(entries, failure_score=-3.0, num_workers=0, timeout_s=1.0)
    assert local.in_process and not pooled.in_process and local.pids() == []
    expected, got = pooled.score(batch), local.score(batch)
    assert got.components == expected.components
    assert got.scores == expected.scores
    assert (
        got.failures
        == expected.failures
        == {
            "raised": 1,
            "nan": 1,
            "not_a_number": 1,
            "timeout": 2,  # waits (cancelled at 1 s) and timed (returned after 1.5 s)
        }
    )
    assert got.components["numeric"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert got.outcomes["trouble"][3].message == "ValueError: boom"
    local.shutdown()


def test_entry_point_verifier_loads_in_the_workers(make_pool, ray_local, tmp_path, monkeypatch):
    root = make_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(root))
    path = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(ray_local, PYTHONPATH=os.pathsep.join(path))
    pool = make_pool("shout", num_workers=2, env_vars=env)
    result = pool.score(items(["HI", "hi", "HI"], reference="hi"))
    assert result.scores == [1.0, 0.0, 1.0]
    assert [o.details for o in result.outcomes["shout"]] == [{"upper": True}, {"upper": False}] + [
        {"upper": True}
    ]


HANG_ONCE = textwrap.dedent(
    '''
    import os, time

    def score(prompt, response, reference, **extras):
        """Hangs the first time it is called in this run (any process), then scores length."""
        try:
            os.close(os.open(MARK, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return min(len(response), 8) / 8
        time.sleep(3600)
    '''
)


def test_grpo_run_with_a_hanging_verifier_and_a_weighted_reward_model_completes(
    ray_local, tmp_path
):
    plugin = tmp_path / "hang_once.py"
    plugin.write_text(f"MARK = {str(tmp_path / 'hung')!r}\n" + HANG_ONCE)
    verifiers = f"[{{name: numeric, weight: 1.0}}, {{name: '{plugin}:score', weight: 0.5}}]"
    cfg = load_config(
        None,
        [
            *TINY,
            "stages=[pretrain,reward_model,grpo]",
            "pretrain.steps=2",
            "pretrain.seq_len=64",
            "reward_model.steps=2",
            "reward_model.batch_size=4",
            "grpo.steps=2",
            "grpo.prompts_per_step=4",
            "grpo.samples_per_prompt=4",
            "grpo.eval_prompts=4",
            "grpo.sampling.max_tokens=8",
            f"grpo.verifier={verifiers}",
            "grpo.verifier_timeout_s=1.0",
            "grpo.failure_score=-1.0",
            "grpo.reward_model_weight=0.25",
        ],
    )
    t0 = time.monotonic()
    run_dir = run_pipeline(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(run_dir) if r["stage"] == "grpo"]

    steps = [r for r in rows if "policy_loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert (tmp_path / "hung").exists()
    timeouts = sum(r.get("verifier_failures/timeout", 0) for r in steps)
    timeouts += sum(r.get("eval/failures", 0) for r in rows if "eval/reward_mean" in r)
    assert timeouts == 1
    for r in steps:
        # The reward is numeric + 0.5 x score + 0.25 x reward model, so are the means.
        parts = r["reward/numeric"] + 0.5 * r["reward/score"] + 0.25 * r["reward/reward_model"]
        assert r["reward_mean"] == pytest.approx(parts, abs=1e-5)
        assert math.isfinite(r["policy_loss"])
    assert (run_dir / "checkpoints" / "grpo" / "model.safetensors").is_file()
    assert time.monotonic() - t0 < 600
