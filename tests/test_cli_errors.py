"""Bad input gets one clear error line naming the place, exit status 2, and no traceback.

Each case runs the real command line in a subprocess, as a user would; every check here fails
before any Ray actor starts (config validation, then the data and plug-in preflight).
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def rlstack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlstack", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_clear_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rlstack: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def test_unknown_key_in_config_file_is_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stages: [pretrain]\npretrain:\n  steps: 3\n  batchsize: 4\n")
    assert_one_clear_error(rlstack("run", str(cfg), cwd=tmp_path), "bad.yaml", "pretrain.batchsize")


def test_unknown_and_mistyped_overrides_are_named(tmp_path):
    result = rlstack("run", "pretrain.stepz=3", cwd=tmp_path)
    assert_one_clear_error(result, "pretrain.stepz")
    result = rlstack("run", "grpo.kl_coef=lots", cwd=tmp_path)
    assert_one_clear_error(result, "grpo.kl_coef", "lots")


def test_value_given_for_a_section_or_a_list_is_named_with_what_it_takes(tmp_path):
    result = rlstack("run", "sft=5", cwd=tmp_path)
    assert_one_clear_error(result, "'sft' is a section", "sft.steps")
    result = rlstack("run", "stages=sft", cwd=tmp_path)
    assert_one_clear_error(result, "'stages' takes a list", "stages=[a,b]")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stages: [sft]\nsft:\n  optim: 0.001\n")
    assert_one_clear_error(rlstack("run", str(cfg), cwd=tmp_path), "bad.yaml", "'sft.optim'", "lr")
    result = rlstack("run", "grpo.data=${seed}", cwd=tmp_path)  # an interpolation, too
    assert_one_clear_error(result, "'grpo.data' is a section", "not a subclass of DataConfig")
    cfg.write_text("model: ${sft}\n")
    assert_one_clear_error(rlstack("run", str(cfg), cwd=tmp_path), "bad.yaml", "'model'")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("stages: {a: 1}\n", "'stages' takes a list"),
        ("pretrain: {data: {options: [1, 2]}}\n", "'pretrain.data.options' takes a mapping"),
        ("pretrain.steps: 5\n", "'pretrain.steps' is a dotted key"),
        ("- pretrain\n", "a mapping of keys, not a list"),
        ("seed: 1\nseed: 2\n", "duplicate key seed"),
        ("grpo: {kl_in_reward: 0}\n", "'grpo.kl_in_reward' takes true or false, got 0"),
    ],
)
def test_config_files_of_the_wrong_shape_are_named_in_one_line(text, fragment, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert_one_clear_error(rlstack("run", str(cfg), cwd=tmp_path), "bad.yaml", fragment)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("pretrain.optim.betas={a:1}", "'pretrain.optim.betas' takes a list"),
        ("grpo.verifier_resources=[1]", "'grpo.verifier_resources' takes a mapping"),
        ("model..hidden_size=3", "expected dotted.key=value"),
        ("stages=[pretrain", "ParserError"),
        ("stages=[pretrain,sft,pretrain]", "pretrain listed more than once"),
        ("rollout.enforce_eager=3", "'rollout.enforce_eager' takes true or false, got 3"),
        ("grpo.dynamic_sampling=sure", "'grpo.dynamic_sampling' takes true or false, got 'sure'"),
    ],
)
def test_overrides_of_the_wrong_shape_are_named_in_one_line(override, fragment, tmp_path):
    assert_one_clear_error(rlstack("run", override, cwd=tmp_path), fragment)


def test_missing_data_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "train.jsonl"
    result = rlstack("run", "stages=[sft]", f"sft.data.train={missing}", cwd=tmp_path)
    assert_one_clear_error(result, "not found", str(missing))


def test_malformed_jsonl_row_names_file_and_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        '{"prompt": "1+1", "response": "2"}\n'
        '{"prompt": "2+2", "response": "4"}\n'
        '{"prompt": "3+3", "response": 6\n'
    )
    result = rlstack("run", "stages=[sft]", f"sft.data.train={data}", cwd=tmp_path)
    assert_one_clear_error(result, "pairs.jsonl:3")


def test_verifier_that_does_not_import_is_named(tmp_path):
    plugin = tmp_path / "my_verifier.py"
    plugin.write_text("def score(prompt, response, reference)\n    return 1.0\n")
    spec = f"{plugin}:score"
    result = rlstack("run", "stages=[grpo]", f"grpo.verifier={spec}", cwd=tmp_path)
    assert_one_clear_error(result, "my_verifier.py")


@pytest.mark.parametrize("args", [["run", "--bogus-flag"], ["frobnicate"]])
def test_bad_command_line_exits_nonzero_with_usage(args, tmp_path):
    result = rlstack(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_named(tmp_path):
    result = rlstack("run", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    assert_one_clear_error(result, "absent.yaml")


def test_smoke_config_is_the_embedded_default():
    from rlstack.config import load_config

    assert load_config(str(REPO / "configs" / "smoke.yaml")) == load_config(None)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["sft.batch_size=0"], "sft.batch_size"),
        (["grpo.prompts_per_step=0"], "grpo.prompts_per_step"),
        (["learner.num_workers=0"], "learner.num_workers"),
        (["pretrain.steps=-1"], "pretrain.steps"),
    ],
)
def test_counts_that_must_be_positive_are_named(overrides, fragment, tmp_path):
    assert_one_clear_error(rlstack("run", *overrides, cwd=tmp_path), fragment)


def test_missing_starting_checkpoint_is_named_before_ray_starts(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    result = rlstack("run", "stages=[sft]", f"model.init={missing}", cwd=tmp_path)
    assert_one_clear_error(result, "model.init", "does not exist")
    assert "Ray" not in result.stderr


def test_ppo_without_a_reward_model_is_refused_before_any_stage_runs(tmp_path):
    result = rlstack("run", "stages=[sft,ppo]", cwd=tmp_path)
    assert_one_clear_error(result, "ppo", "reward_model")
    assert "stage sft: starting" not in result.stderr


def test_reused_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"stage": "sft", "step": 0}\n')
    result = rlstack("run", "--run-dir", str(run_dir), cwd=tmp_path)
    assert_one_clear_error(result, "already holds metrics.jsonl")
    assert (run_dir / "metrics.jsonl").read_text() == '{"stage": "sft", "step": 0}\n'


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("grpo.failure_score=nan", "grpo.failure_score: must be a finite number"),
        ("grpo.sampling.temperature=-1", "grpo.sampling.temperature"),
        ("grpo.sampling.min_tokens=100", "grpo.sampling.min_tokens"),
        ("grpo.sampling.max_tokens=1000", "leaves no room for the prompt"),
        ("grpo.sampling.top_p=5", "grpo.sampling.top_p"),
        ("rollout.dtype=float8", "rollout.dtype"),
        ("sft.optim.lr=nan", "sft.optim.lr"),
        ("sft.optim.betas=[0.9]", "sft.optim.betas"),
        ("learner.cpus_per_worker=-1", "learner.cpus_per_worker"),
        ("pretrain.seq_len=100000", "pretrain.seq_len"),
        ("grpo.lam=5", "grpo.lam"),
        ("rollout.gpu_memory_utilization=2", "rollout.gpu_memory_utilization"),
    ],
)
def test_values_out_of_range_are_named_before_anything_starts(override, fragment, tmp_path):
    assert_one_clear_error(rlstack("run", override, cwd=tmp_path), fragment)
    assert not (tmp_path / "runs").exists()


def test_failed_preflight_leaves_the_users_run_directory_untouched(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    result = rlstack(
        "run",
        "--run-dir",
        str(run_dir),
        "sft.data.train=missing.jsonl",
        "stages=[sft]",
        cwd=tmp_path,
    )
    assert_one_clear_error(result, "missing.jsonl")
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]
    (run_dir / "config.yaml").write_text("my precious config")
    assert_one_clear_error(rlstack("run", "--run-dir", str(run_dir), cwd=tmp_path), "config.yaml")
    assert (run_dir / "config.yaml").read_text() == "my precious config"


def test_built_in_verifier_option_errors_stop_the_run(tmp_path):
    for args, fragment in [
        ("{pattern: '('}", "invalid pattern"),
        ("{patern: x}", "no option patern"),
    ]:
        result = rlstack(
            "run",
            "stages=[sft,grpo]",
            f"grpo.verifier=[{{name: regex, args: {args}}}]",
            cwd=tmp_path,
        )
        assert_one_clear_error(result, "regex", fragment)


def test_checkpoint_of_the_wrong_kind_is_refused(tmp_path):
    from tiny_config import save_tiny_model

    policy = save_tiny_model(tmp_path / "policy", max_seq_len=256)
    result = rlstack(
        "run", "stages=[ppo]", f"model.init={policy}", f"ppo.reward_model={policy}", cwd=tmp_path
    )
    assert_one_clear_error(result, "ppo.reward_model", "needs a reward model")


def test_checkpoint_shorter_than_max_seq_len_is_refused(tmp_path):
    import json

    policy = tmp_path / "policy"
    policy.mkdir()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (policy / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    result = rlstack("run", "stages=[grpo]", f"model.init={policy}", cwd=tmp_path)
    assert_one_clear_error(result, "model.init", "holds at most 64 positions")
    assert "model.max_seq_len=64" in result.stderr


def test_checkpoint_with_truncated_weights_is_named_before_ray_starts(tmp_path):
    from tiny_config import save_tiny_model

    policy = save_tiny_model(tmp_path / "policy", max_seq_len=256)
    weights = policy / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    result = rlstack("run", "stages=[sft]", f"model.init={policy}", cwd=tmp_path)
    assert_one_clear_error(result, "model.init", "model.safetensors cannot be read")
    weights.unlink()
    result = rlstack("run", "stages=[sft]", f"model.init={policy}", cwd=tmp_path)
    assert_one_clear_error(result, "model.init", "holds no weights")


def test_checkpoint_whose_parts_do_not_load_or_match_is_named_before_ray_starts(tmp_path):
    import json
    import shutil

    from tiny_config import save_tiny_model

    good = save_tiny_model(tmp_path / "good", max_seq_len=256)
    config = json.loads((good / "config.json").read_text())

    def broken(name: str, damage) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        damage(path)
        return path

    cases = [
        (lambda p: (p / "config.json").write_text("[]"), "not an object"),
        (lambda p: (p / "config.json").write_text("{}"), "is not a model config"),
        (lambda p: (p / "tokenizer.json").write_text("junk"), "tokenizer cannot be loaded"),
        (
            lambda p: (p / "config.json").write_text(json.dumps({**config, "hidden_size": 32})),
            "the weights belong to another model",
        ),
    ]
    from rlstack.model.build import load_scalar_model, load_tokenizer, save_model

    save_model(load_scalar_model(good), load_tokenizer(good), tmp_path / "rm")
    cases.append(  # a reward model's weights under a policy's config: no output layer
        (lambda p: shutil.copy(tmp_path / "rm" / "model.safetensors", p), "no lm_head.weight")
    )
    for i, (damage, fragment) in enumerate(cases):
        path = broken(f"bad{i}", damage)
        result = rlstack("run", "stages=[sft]", f"model.init={path}", cwd=tmp_path)
        assert_one_clear_error(result, "model.init", fragment)
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_too_little_pretraining_text_and_a_missing_base_model_fail_before_anything_starts(
    tmp_path,
):
    short = tmp_path / "short.txt"
    short.write_text("x" * 100)
    result = rlstack("run", "stages=[pretrain]", f"pretrain.data.train={short}", cwd=tmp_path)
    assert_one_clear_error(result, "pretrain.data", "training tokens", "pretrain.seq_len=128")
    result = rlstack("run", "stages=[reward_model,grpo]", cwd=tmp_path)
    assert_one_clear_error(result, "reward_model: needs a base model", "model.init")
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.hidden_size=130", "num_heads (4) must divide hidden_size (130)"),
        ("model.num_kv_heads=3", "num_kv_heads (3) must divide num_heads (4)"),
    ],
)
def test_model_shapes_that_do_not_divide_are_named_with_their_values(override, fragment, tmp_path):
    assert_one_clear_error(rlstack("run", override, cwd=tmp_path), fragment)


def test_a_verifier_pool_larger_than_the_local_ray_is_refused_before_it_starts(tmp_path):
    result = rlstack("run", "stages=[sft,grpo]", "grpo.verifier_workers=100000", cwd=tmp_path)
    assert_one_clear_error(result, "grpo.verifier_workers: 100000 workers", "lower either")
    assert not (tmp_path / "runs").exists()
