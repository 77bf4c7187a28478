"""The pieces of a resumable run: atomic state directories, the done marker, metrics trimming,
the prompt sampler's position, and a real DeepSpeed learner saving and restoring its state."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import ray
import torch
from safetensors.torch import load as load_safetensors
from tiny_config import save_tiny_model

from rlstack.config import load_config
from rlstack.errors import ConfigError, DataError
from rlstack.learner.group import LearnerGroup
from rlstack.learner.worker import ModelSpec, _lr_lambda
from rlstack.stages.rl_samples import PromptSampler
from rlstack.stages.state import (
    BrokenStateError,
    StageState,
    keep_metrics,
    latest_state,
    mark_done,
    read_done,
    stage_state_dir,
    write_state,
)


# ------------------------------------------------------------------ sampler
def test_prompt_sampler_continues_from_a_saved_position_across_epochs():
    uninterrupted = PromptSampler(7, seed=3)
    expected = [uninterrupted.take(3) for _ in range(6)]  # crosses two epoch boundaries

    first = PromptSampler(7, seed=3)
    taken = [first.take(3) for _ in range(4)]
    saved = json.loads(json.dumps(first.state()))  # through JSON, as meta.json stores it
    resumed = PromptSampler(7, seed=3)
    resumed.load_state(saved)
    taken += [resumed.take(3) for _ in range(2)]
    assert taken == expected
    assert saved == {"n": 7, "seed": 3, "epoch": 1, "index": 5}


def test_prompt_sampler_refuses_a_state_of_other_data():
    sampler = PromptSampler(7, seed=3)
    with pytest.raises(ValueError, match="7"):
        sampler.load_state({"n": 8, "seed": 3, "epoch": 0, "index": 2})


# ------------------------------------------------------------ state folders
def test_state_is_written_atomically_and_only_the_newest_two_are_kept(tmp_path):
    def parts(tmp):
        (tmp / "policy").mkdir()
        (tmp / "policy" / "weights.bin").write_bytes(b"w")
        return {"digests": {"policy": "abc"}}

    for step in (2, 4, 6):
        write_state(tmp_path, "sft", step, {"data": {"step": step}}, parts)
    root = stage_state_dir(tmp_path, "sft")
    assert sorted(p.name for p in root.iterdir()) == ["step-000004", "step-000006"]
    saved = latest_state(tmp_path, "sft")
    assert saved.step == 6 and saved.meta["data"] == {"step": 6}
    assert saved.meta["digests"] == {"policy": "abc"}

    def broken(tmp):
        (tmp / "policy").mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_state(tmp_path, "sft", 8, {"data": {}}, broken)
    assert latest_state(tmp_path, "sft").step == 6  # the failed save left no state behind
    assert not (root / "step-000008").exists()
    # A later save of that step replaces the temporary leftovers.
    write_state(tmp_path, "sft", 8, {"data": {}}, parts)
    assert latest_state(tmp_path, "sft").step == 8
    assert sorted(p.name for p in root.iterdir()) == ["step-000006", "step-000008"]


def test_an_unreadable_newest_state_falls_back_to_the_older_one(tmp_path):
    write_state(tmp_path, "grpo", 1, {"data": {}})
    newest = write_state(tmp_path, "grpo", 2, {"data": {}})
    (newest / "meta.json").write_text("{cut sh")
    assert latest_state(tmp_path, "grpo").step == 1
    assert latest_state(tmp_path, "ppo") is None


def test_a_stage_starting_afresh_removes_states_an_earlier_attempt_left(tmp_path):
    write_state(tmp_path, "grpo", 10, {"train_rows": 4, "data": {}, "digests": {}})
    (stage_state_dir(tmp_path, "grpo") / ".step-000012.tmp").mkdir()

    def stage_state(resume: bool) -> StageState:
        ctx = SimpleNamespace(run_dir=tmp_path, resume=resume)
        return StageState(ctx, "grpo", 2, {}, dict, lambda saved: None, train_rows=5)

    with pytest.raises(DataError, match="has 5 rows, but the state .* was saved with 4"):
        stage_state(resume=True).restore()  # resuming on other data is refused
    assert latest_state(tmp_path, "grpo").step == 10
    assert stage_state(resume=False).restore() == 0
    assert list(stage_state_dir(tmp_path, "grpo").iterdir()) == []


def test_done_marker_needs_the_checkpoint_and_clears_the_step_states(tmp_path):
    write_state(tmp_path, "sft", 2, {"data": {}})
    ckpt = tmp_path / "checkpoints" / "sft"
    mark_done(tmp_path, "sft", str(ckpt), 12.5)
    assert latest_state(tmp_path, "sft") is None
    with pytest.raises(ConfigError, match="finished, but its checkpoint .* is gone"):
        read_done(tmp_path, "sft")  # rerunning it would drop the later stages' work
    save_tiny_model(ckpt)
    assert read_done(tmp_path, "sft") == {"checkpoint": str(ckpt.resolve()), "seconds": 12.5}
    weights = ckpt / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 1)
    with pytest.raises(ConfigError, match="finished, but its checkpoint.*cannot be read"):
        read_done(tmp_path, "sft")
    (ckpt / "config.json").write_text("[]")
    with pytest.raises(ConfigError, match="finished, but its checkpoint.*not an object"):
        read_done(tmp_path, "sft")
    # Stored relative to the run directory, so a moved run directory still finds it.
    done = json.loads((stage_state_dir(tmp_path, "sft") / "done.json").read_text())
    assert done["checkpoint"] == "checkpoints/sft"


def test_metrics_keep_finished_stages_and_steps_up_to_the_restored_one(tmp_path):
    rows = [("sft", 0), ("sft", 10), ("grpo", 0), ("grpo", 1), ("grpo", 2), ("grpo", 3)]
    text = "".join(json.dumps({"stage": s, "step": n}) + "\n" for s, n in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"stage": "grpo", "st')
    assert keep_metrics(tmp_path, ["sft"], "grpo", 2) == 2
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in kept] == rows[:5]
    assert keep_metrics(tmp_path, ["sft"], "grpo", 0) == 3  # no state: the stage reruns
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in kept] == ["sft", "sft"]


# ------------------------------------------------------------------ learner
OPTIM = {
    "lr": 3e-3,
    "betas": [0.9, 0.95],
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "warmup_steps": 2,
    "min_lr_ratio": 0.1,
}


def batch(seed: int) -> dict[str, torch.Tensor]:
    rng = random.Random(seed)
    ids = torch.tensor([[rng.randrange(5, 40) for _ in range(24)] for _ in range(4)])
    ones = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}


def weights(group: LearnerGroup) -> dict[str, torch.Tensor]:
    return load_safetensors(ray.get(group.weights_blob_ref()))


def test_learner_restores_weights_optimizer_and_schedule_bit_for_bit(ray_local, tmp_path):
    save_tiny_model(tmp_path / "init", num_layers=1, max_seq_len=64)
    spec = ModelSpec(
        kind="causal_lm",
        init_path=str(tmp_path / "init"),
        optim=OPTIM,
        total_steps=8,
        micro_batch_size=2,
        grad_accum=2,
        threads=1,
    )
    group = LearnerGroup("policy", spec, cpus_per_worker=0.5, env_vars=ray_local).start()
    try:
        first = [group.train("lm_step", batch(i)) for i in range(3)]
        # The LR schedule counts optimizer steps (8 here), not micro-batches (16).
        schedule = _lr_lambda(OPTIM, 8)
        assert [m["lr"] for m in first] == pytest.approx([3e-3 * schedule(k) for k in (1, 2, 3)])
        saved = group.save_state(str(tmp_path / "state" / "policy"))
        at_save = weights(group)
        later = [group.train("lm_step", batch(i)) for i in (3, 4)]
        assert not torch.equal(weights(group)["lm_head.weight"], at_save["lm_head.weight"])

        restored = group.load_state(str(tmp_path / "state" / "policy"))
        assert restored == saved
        assert saved[0]["optimizer_steps"] == 3 and saved[0]["lr_schedule_step"] == 3
        after_load = weights(group)
        assert after_load.keys() == at_save.keys()
        assert all(torch.equal(after_load[k], at_save[k]) for k in at_save)
        # Adam's moments and the LR schedule came back too: the same updates follow.
        again = [group.train("lm_step", batch(i)) for i in (3, 4)]
        assert again == later
        assert [m["lr"] for m in later] == pytest.approx([3e-3 * schedule(k) for k in (4, 5)])
    finally:
        group.shutdown()


class _Ctx:
    """The parts of a stage context that StageState reads, for restores without learners."""

    def __init__(self, run_dir, rows):
        self.run_dir, self.resume, self.rows = run_dir, True, rows

    def load_data(self, stage):
        return self.rows, []


def _stage_state(ctx):
    return StageState(ctx, "grpo", 5, {}, lambda: {"pos": 1}, lambda saved: None, len(ctx.rows))


def test_resume_on_changed_rows_of_the_same_count_is_refused(tmp_path):
    rows = [{"prompt": f"{i}+1", "reference": str(i + 1)} for i in range(4)]
    _stage_state(_Ctx(tmp_path, rows)).save(5)
    assert _stage_state(_Ctx(tmp_path, list(rows))).restore() == 5
    changed = [dict(r, reference="0") for r in rows]
    with pytest.raises(DataError, match="same 4 rows, other contents"):
        _stage_state(_Ctx(tmp_path, changed)).restore()


def test_a_state_with_a_broken_meta_says_which_directory_to_remove(tmp_path):
    rows = [{"prompt": "1+1", "reference": "2"}]
    _stage_state(_Ctx(tmp_path, rows)).save(5)
    _stage_state(_Ctx(tmp_path, rows)).save(10)
    newest = tmp_path / "state" / "grpo" / "step-000010"
    (newest / "meta.json").write_text("{}")
    with pytest.raises(BrokenStateError, match="lacks train_rows") as err:
        _stage_state(_Ctx(tmp_path, rows)).restore()
    assert f"remove {newest} to resume from step 5" in str(err.value)


def test_an_engine_failure_keeps_its_traceback_and_ends_it_with_the_way_to_resume(tmp_path):
    from rlstack.driver import _stopped

    ctx = SimpleNamespace(run_dir=tmp_path, outputs={}, step=7, cfg=load_config(None))
    crash = RuntimeError("The actor died unexpectedly before finishing this task.")
    assert _stopped(ctx, "grpo", crash) is None  # re-raised as it is, traceback and all
    assert crash.__notes__ == [
        "rlstack: stage grpo stopped at step 7; no state was saved yet (grpo.save_every=10); "
        f"start the run again in another run directory (or remove {tmp_path} first)"
    ]
    write_state(tmp_path, "grpo", 5, {"data": {}})
    crash = RuntimeError("worker crashed")
    assert _stopped(ctx, "grpo", crash) is None
    assert crash.__notes__[0].endswith(
        f"the run can resume from grpo step 5: rlstack run --resume {tmp_path}"
    )
