"""The verifier API without Ray: results, entry points, options, combination config."""

import math
import sys
import textwrap
from pathlib import Path
from unittest.mock import ANY

import pytest

from rlstack.config import load_config
from rlstack.errors import ConfigError, PluginError
from rlstack.scorers.verifier_worker import VerifierWorker
from rlstack.verifiers import (
    available_verifiers,
    batched,
    check_options,
    combine,
    is_async,
    is_batched,
    load_verifier,
    parse_verifier_entries,
)
from rlstack.verifiers.api import read_result
from rlstack.verifiers.combine import VerifierEntry


def make_distribution(root, name="rlstack_testplug", module="testplug_checks"):
    """A real (if minimal) installed distribution publishing two verifiers as entry points."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[rlstack.verifiers]\nshout = {module}:shout\nbroken = {module}_missing:nothing\n"
    )
    (root / f"{module}.py").write_text(
        textwrap.dedent(
            '''
            def shout(prompt, response, reference, **extras):
                """1.0 when the response is the reference in capitals."""
                score = 1.0 if response == reference.upper() else 0.0
                return score, {"upper": response.isupper()}
            '''
        )
    )
    return root


def test_results_are_read_as_number_or_number_and_details():
    assert read_result(0.5) == (0.5, None, None, None)
    assert read_result(True).score == 1.0
    assert read_result((1, {"why": "ok"})) == (1.0, None, {"why": "ok"}, None)
    assert read_result(float("nan")).failure == "nan"
    assert read_result(math.inf).failure == "nan"
    assert read_result("yes").failure == "not_a_number"
    assert read_result("1.0").failure == "not_a_number"  # a number's text is not a score
    assert read_result(None).failure == "not_a_number"
    assert read_result((None, {"x": 1})).details == {"x": 1}


def test_worker_counts_failures_by_kind_in_process(tmp_path):
    plugin = tmp_path / "flaky.py"
    plugin.write_text(
        "def score(prompt, response, reference, **extras):\n"
        "    if response == 'raise':\n"
        "        raise ValueError('boom')\n"
        "    if response == 'nan':\n"
        "        return float('nan')\n"
        "    if response == 'text':\n"
        "        return 'yes'\n"
        "    return 1.0 if response == reference else 0.0\n"
    )
    worker = VerifierWorker([VerifierEntry(f"{plugin}:score")], timeout_s=5.0)
    items = [{"prompt": "p", "response": r, "reference": "7"} for r in ["7", "8", "raise", "nan"]]
    items.append({"prompt": "p", "response": "text", "reference": "7"})
    out = worker.score_all(0, items)
    assert [o.score for o in out] == [1.0, 0.0, None, None, None]
    assert [o.failure for o in out] == [None, None, "raised", "nan", "not_a_number"]
    assert out[2].message == "ValueError: boom"


def test_decorators_mark_batched_and_async_verifiers():
    @batched
    def many(prompts, responses, references, **extras):
        return [1.0] * len(responses)

    async def later(prompt, response, reference, **extras):
        return 1.0

    assert is_batched(many) and not is_async(many)
    assert is_async(later) and not is_batched(later)
    assert not is_batched(later)


def test_entry_point_of_an_installed_distribution_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path)))
    fn = load_verifier("shout")
    assert fn("p", "HI", "hi") == (1.0, {"upper": True})
    listed = {name: (origin, text) for name, origin, text in available_verifiers()}
    assert listed["numeric"][0] == "built-in"
    assert listed["shout"] == (
        "entry point testplug_checks:shout (rlstack_testplug)",
        "1.0 when the response is the reference in capitals.",
    )
    assert listed["broken"][1].startswith("does not load:")
    with pytest.raises(PluginError, match="broken.*does not load.*ModuleNotFoundError"):
        load_verifier("broken")
    sys.modules.pop("testplug_checks", None)


def test_unknown_name_lists_built_ins_and_entry_points(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path)))
    with pytest.raises(PluginError) as err:
        load_verifier("shuot")
    assert "numeric" in str(err.value) and "shout" in str(err.value)


@pytest.mark.parametrize(("name", "meant"), [("numerc", "numeric"), ("gsm8 k", "gsm8k")])
def test_misspelt_built_in_name_suggests_the_closest_one(name, meant):
    with pytest.raises(PluginError, match=f"did you mean '{meant}'"):
        load_verifier(name)


def test_misspelt_verifier_in_the_config_is_named_with_its_key(tmp_path):
    ctx_cfg = load_config(None, ["stages=[grpo]", "grpo.verifier=numerc"])
    from rlstack.stages.context import StageContext

    with pytest.raises(PluginError, match=r"^grpo\.verifier: .*did you mean 'numeric'"):
        StageContext(ctx_cfg, tmp_path, None, {}).preflight()
    ctx_cfg = load_config(None, ["stages=[grpo]", "grpo.verifier=[numeric, {name: exact_mach}]"])
    with pytest.raises(PluginError, match=r"^grpo\.verifier\[1\]: .*'exact_match'"):
        StageContext(ctx_cfg, tmp_path, None, {}).preflight()


def test_option_a_plug_in_does_not_take_is_named_with_the_ones_it_takes():
    def concise(prompt, response, reference, max_chars, **extras):
        return 1.0

    def strict(prompt, response, reference, *, max_chars, lower=False):
        return 1.0

    def lenient(prompt, response, reference, max_chars=200, **extras):  # max_char: in extras
        return 1.0

    for fn in (concise, strict, lenient):
        with pytest.raises(PluginError) as err:
            check_options(fn, {"max_char": 5}, "f.py:fn")
        message = str(err.value)
        assert "no option max_char" in message and "did you mean 'max_chars'" in message
        assert "options: max_chars" in message
        assert "missing" not in message
    check_options(concise, {"max_chars": 5, "anything": 1}, "f.py:fn")  # extras are allowed
    check_options(lenient, {"topic": "add"}, "f.py:fn")
    with pytest.raises(PluginError, match="missing a required argument: 'max_chars'"):
        check_options(strict, {"lower": True}, "f.py:fn")


def test_options_a_verifier_cannot_take_are_named():
    def strict(prompt, response, reference, *, pattern="x"):
        return 1.0

    check_options(strict, {"pattern": "y"}, "strict")
    with pytest.raises(PluginError, match="strict.*patern"):
        check_options(strict, {"patern": "y"}, "strict")
    with pytest.raises(PluginError, match="two.*cannot be called with"):
        check_options(lambda prompt, response: 1.0, {}, "two")


def test_combination_entries_get_weights_options_and_unique_labels():
    entries = parse_verifier_entries(
        [
            {"name": "numeric", "weight": 2},
            {"name": "pkg.mod:score", "args": {"k": 1}},
            {"name": "x/y.py:score", "weight": -0.5, "label": ""},
            "exact_match",
        ]
    )
    assert [(e.spec, e.weight, e.args, e.label) for e in entries] == [
        ("numeric", 2.0, {}, "numeric"),
        ("pkg.mod:score", 1.0, {"k": 1}, "score"),
        ("x/y.py:score", -0.5, {}, "score_2"),
        ("exact_match", 1.0, {}, "exact_match"),
    ]
    assert parse_verifier_entries("gsm8k") == [VerifierEntry("gsm8k", 1.0, {}, "gsm8k")]
    assert combine([2.0, 1.0, -0.5], [[1, 0], [0.5, 0.5], [1, 1]]) == [2.0, 0.0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "grpo.verifier: the verifier list is empty"),
        ("[{name: numeric, wieght: 1}]", "grpo.verifier[0]: unknown key 'wieght'"),
        ("[{name: numeric, weight: heavy}]", "grpo.verifier[0].weight: expected a finite number"),
        ("[{name: numeric}, {weight: 1}]", "grpo.verifier[1].name: expected a verifier name"),
        ("[{name: numeric, args: 3}]", "grpo.verifier[0].args: expected a mapping"),
        ("[{name: numeric, label: reward_model}]", "'reward_model' is reserved"),
        ("[{name: numeric}, {name: gsm8k, label: numeric}]", "'numeric' is used by an earlier"),
        ("7", "grpo.verifier: expected a verifier name or a list"),
    ],
)
def test_bad_verifier_config_is_one_clear_line(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"grpo.verifier={value}"])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_scoring_keys_are_validated_and_the_old_string_form_still_loads():
    cfg = load_config(None, ["grpo.verifier=gsm8k", "grpo.reward_model_weight=0.5"])
    assert cfg.grpo.verifier == "gsm8k" and cfg.grpo.reward_model_weight == 0.5
    assert load_config(None).grpo.verifier == "numeric"
    for bad, key in [
        ("grpo.verifier_timeout_s=0", "grpo.verifier_timeout_s"),
        ("grpo.verifier_workers=-1", "grpo.verifier_workers"),
        ("grpo.verifier_cpus_per_worker=-1", "grpo.verifier_cpus_per_worker"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


def test_documented_example_verifiers_work_as_the_docs_say():
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_verifiers.py"
    entries = parse_verifier_entries(
        [
            {"name": f"{example}:boxed_answer"},
            {"name": f"{example}:concise", "args": {"max_chars": 14}},
            {"name": f"{example}:numeric_async"},
        ]
    )
    worker = VerifierWorker(entries, timeout_s=5.0)
    batch = [
        {"prompt": "6*7", "response": "so \\boxed{42}", "reference": "42"},
        {"prompt": "6*7", "response": "I think it is 41", "reference": "42"},
    ]
    boxed, concise, numeric = (worker.score_all(v, batch) for v in range(3))
    assert boxed == [(1.0, None, {"answer": "42"}, None), (0.0, None, {"reason": ANY}, None)]
    assert [o.score for o in concise] == [1.0, 0.0]  # 13 and 16 characters; limit 14
    assert [o.score for o in numeric] == [1.0, 0.0]


def test_reward_parts_follow_their_samples_when_groups_are_refilled_and_selected():
    from rlstack.stages.rl_samples import Rollout

    def rollout(scores, parts):
        samples = [{"prompt_index": i // 2, "response_ids": [1]} for i in range(len(scores))]
        return Rollout(
            prompt_ids=[[1]] * (len(scores) // 2),
            rows=[{"prompt": "p"}] * (len(scores) // 2),
            samples=samples,
            scores=scores,
            components={"numeric": parts},
        )

    pool = rollout([1.0, 1.0, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4])
    pool.extend(rollout([0.0, 1.0], [0.5, 0.6]))
    assert pool.components == {"numeric": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}
    kept = pool.select([[2, 3], [4, 5]])  # the groups whose scores differ
    assert kept.scores == [0.0, 1.0, 0.0, 1.0]
    assert kept.components == {"numeric": [0.3, 0.4, 0.5, 0.6]}
