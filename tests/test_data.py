"""Tests for rlstack.data: sources, formats, synthetic data and splitting.

    .venv/bin/python -m pytest tests/test_data.py

The real-data tests read ../shared/data (next to the repository) and are skipped without it.
No test touches the network.
"""

import gzip
import json
import re
import string
from pathlib import Path

import pytest

from rlstack.data import FORMATS, load_records, load_rows, split_rows, synthetic_records
from rlstack.data.formats import gsm8k_calc, hh_rlhf, prompt_reference
from rlstack.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GSM8K_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"
HH_TEST = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def _require(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (see shared/data/README.md)")
    return str(path)


def _write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# --- real data ---------------------------------------------------------------------------------


def test_gsm8k_calc_turns_real_annotations_into_distinct_calculations():
    rows = load_rows(_require(GSM8K_TRAIN), "gsm8k_calc")

    assert len(rows) == 10772
    assert rows[:3] == [
        {"prompt": "48/2", "reference": "24", "response": "24"},
        {"prompt": "48+24", "reference": "72", "response": "72"},
        {"prompt": "12/60", "reference": "0.2", "response": "0.2"},
    ]
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == len(prompts)
    assert not any(" " in p for p in prompts)
    assert all(re.fullmatch(r"-?(\d+(\.\d+)?|\.\d+)", r["reference"]) for r in rows)


def test_hh_rlhf_real_pairs_end_at_assistant_turn_and_differ():
    rows = load_rows(_require(HH_TEST), "hh_rlhf")

    assert 2200 < len(rows) <= 2312
    for row in rows:
        assert row["prompt"].endswith("Assistant:")
        assert row["chosen"] and row["rejected"]
        assert row["chosen"] != row["rejected"]
        assert row["chosen"] == row["chosen"].strip()


def test_hh_rlhf_max_prompt_chars_keeps_the_tail_from_a_human_turn():
    rows = load_rows(_require(HH_TEST), "hh_rlhf", max_prompt_chars=400)

    assert all(len(r["prompt"]) <= 400 for r in rows)
    assert all(r["prompt"].endswith("\n\nAssistant:") for r in rows)
    assert sum(r["prompt"].startswith("\n\nHuman:") for r in rows) > 0.95 * len(rows)


def test_txt_file_loads_as_one_text_record():
    records = load_records(_require(SHAKESPEARE))

    assert len(records) == 1
    assert records[0]["text"].startswith("First Citizen:")
    assert len(records[0]["text"].splitlines()) == 40000
    assert load_rows(str(SHAKESPEARE), "text") == [records[0]["text"]]


# --- sources -----------------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",, }\n', encoding="utf-8")

    with pytest.raises(DataError, match="malformed JSON row") as caught:
        load_records(str(path))
    assert "x.jsonl:3:" in str(caught.value)


def test_jsonl_row_that_is_not_an_object_is_rejected(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")

    with pytest.raises(DataError, match=r"x\.jsonl:2: row is not a JSON object"):
        load_records(str(path))


def test_jsonl_skips_blank_lines_and_reads_gzip_and_max_rows(tmp_path):
    plain = tmp_path / "x.jsonl"
    plain.write_text('{"n": 1}\n\n  \n{"n": 2}\n{"n": 3}\n', encoding="utf-8")
    packed = tmp_path / "x.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(plain.read_text(encoding="utf-8"))

    assert load_records(str(plain)) == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert load_records(str(packed)) == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert load_records(str(plain), max_rows=2) == [{"n": 1}, {"n": 2}]


def test_jsonl_reading_stops_at_max_rows_and_names_bad_utf8_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": 2}\n{"n": "\xff"}\n')

    assert load_records(str(path), max_rows=2) == [{"n": 1}, {"n": 2}]
    with pytest.raises(DataError, match=r"x\.jsonl:3: row is not valid UTF-8"):
        load_records(str(path))


def test_json_csv_and_parquet_files_load_as_records(tmp_path):
    rows = [{"prompt": "1+1", "response": "2"}, {"prompt": "2+2", "response": "4"}]
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "b.csv").write_text("prompt,response\n1+1,2\n2+2,4\n", encoding="utf-8")
    _write_jsonl(tmp_path / "c.json", rows)  # JSON lines under a .json name
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")

    for name in ("a.json", "b.csv", "c.json", "d.parquet"):
        assert load_records(str(tmp_path / name)) == rows, name
    assert load_records(str(tmp_path / "d.parquet"), max_rows=1) == rows[:1]


def test_ragged_csv_row_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,response\n1+1,2\n2+2,4,extra\n", encoding="utf-8")

    with pytest.raises(DataError, match=r"bad\.csv:3: row has 3 fields"):
        load_records(str(path))


@pytest.mark.parametrize("name", ["nope.jsonl", "./nope", "sub/nope.csv", "~/rlstack-nope.txt"])
def test_missing_local_file_raises_data_error(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(DataError, match=f"data file not found: {re.escape(name)}"):
        load_records(name)


def test_failed_hub_load_is_a_one_line_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(path, name=None, split=None):
        raise ConnectionError(f"cannot reach the hub\nfor {path}")

    monkeypatch.setattr(datasets, "load_dataset", offline)

    with pytest.raises(DataError) as caught:
        load_records("someone/some-data", split="test")
    message = str(caught.value)
    assert "someone/some-data" in message and "ConnectionError" in message
    assert "\n" not in message


def test_local_directory_loads_with_datasets_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"text": "a"}, {"text": "b"}])

    assert load_records(str(folder)) == [{"text": "a"}, {"text": "b"}]
    assert load_records(str(folder), max_rows=1) == [{"text": "a"}]
    with pytest.raises(DataError, match="split 'test'"):
        load_records(str(folder), split="test")


def _folder_with_subsets(folder):
    """A local dataset folder with two configurations, as hub data sets declare them."""
    card = ["---", "configs:"]
    for subset in ("main", "socratic"):
        card += [f"- config_name: {subset}", "  data_files:"]
        (folder / subset).mkdir(parents=True)
        for split in ("train", "test"):
            _write_jsonl(folder / subset / f"{split}.jsonl", [{"text": f"{subset}-{split}"}])
            card += [f"  - split: {split}", f"    path: {subset}/{split}.jsonl"]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))
    return folder


def test_a_subset_names_the_configuration_of_a_dataset_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = str(_folder_with_subsets(tmp_path / "folder"))

    assert load_records(folder, split="test", subset="main") == [{"text": "main-test"}]
    assert load_records(folder, subset="socratic") == [{"text": "socratic-train"}]
    with pytest.raises(DataError, match="name one with the data's `subset` key"):
        load_records(folder)
    with pytest.raises(DataError, match="subset 'nope'.*'main', 'socratic'"):
        load_records(folder, subset="nope")
    with pytest.raises(ConfigError, match="only a data set folder or a hub data set has subsets"):
        load_records(str(tmp_path / "folder" / "main" / "train.jsonl"), subset="main")


def test_held_out_data_of_the_same_dataset_reads_the_same_subset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = _folder_with_subsets(tmp_path / "folder")
    data = ["stages=[pretrain]", f"pretrain.data.train={folder}", "pretrain.data.format=text"]
    data += [f"pretrain.data.eval={folder}", "pretrain.data.subset=socratic"]

    train, held = _stage_data(tmp_path, *data).load_data("pretrain")
    _, other = _stage_data(tmp_path, *data, "pretrain.data.eval_subset=main").load_data("pretrain")

    assert (train, held, other) == (["socratic-train"], ["socratic-test"], ["main-test"])


# --- formats -----------------------------------------------------------------------------------


def test_row_errors_of_a_file_with_lines_name_the_line_not_the_row_count(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n  \n{"prompt": "c"}\n', encoding="utf-8")
    csv_path = tmp_path / "sft.csv"
    csv_path.write_text('prompt,reply\n"a\nb",c\n', encoding="utf-8")
    array = tmp_path / "sft.json"
    array.write_text(json.dumps([{"prompt": "a", "response": "b"}, {"prompt": "c"}]))

    with pytest.raises(DataError, match=r"sft\.jsonl:4: missing field 'response'"):
        load_rows(str(path), "prompt_response")
    with pytest.raises(DataError, match=r"sft\.jsonl:4: missing field 'response'"):
        load_rows(f"{path}[1:]", "prompt_response")  # a slice keeps the file's line numbers
    with pytest.raises(DataError, match=r"sft\.csv:2: missing field 'response'"):
        load_rows(str(csv_path), "prompt_response")
    with pytest.raises(DataError, match=r"sft\.json: row 2: missing field 'response'"):
        load_rows(str(array), "prompt_response")  # a JSON array has rows, not lines


def test_non_string_field_is_rejected_with_its_row():
    records = [{"prompt": "a", "chosen": "b", "rejected": 3}]

    with pytest.raises(DataError, match=r"mem: row 1: field 'rejected' is int"):
        FORMATS["pairs"](records, "mem")


def test_field_options_rename_columns(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"question": "2+2", "answer": "4"}])

    rows = load_rows(path, "prompt_response", prompt_field="question", response_field="answer")

    assert rows == [{"prompt": "2+2", "response": "4"}]


def test_a_numeric_reference_is_read_as_its_text_as_verify_reads_it():
    rows = prompt_reference(
        [{"prompt": "6*7", "reference": 42}, {"prompt": "1/2", "reference": 0.5}], "n"
    )
    assert [r["reference"] for r in rows] == ["42", "0.5"]
    with pytest.raises(DataError, match="n: row 1: field 'reference' is bool"):
        prompt_reference([{"prompt": "p", "reference": True}], "n")


def test_prompt_reference_keeps_other_columns_as_extras():
    records = [{"question": "1+2", "reference": "3", "level": 1, "prompt": "stale"}]

    rows = prompt_reference(records, "mem", prompt_field="question")

    assert rows == [{"prompt": "1+2", "reference": "3", "level": 1}]


def test_gsm8k_calc_strips_spaces_and_skips_bad_and_repeated_annotations():
    records = [
        {"answer": "a <<48 / 2=24>>24 b <<=3>> c <<2+2=>> d <<1+1=two>> e <<7*1=1,000>>"},
        {"answer": "<<48/2=24>>24 again, then <<3-5=-2>>-2 and <<1/2=.5>>.5\n#### 1"},
    ]

    rows = gsm8k_calc(records, "mem")

    assert [(r["prompt"], r["reference"]) for r in rows] == [
        ("48/2", "24"),
        ("3-5", "-2"),
        ("1/2", ".5"),
    ]
    assert all(r["response"] == r["reference"] for r in rows)


def test_hh_rlhf_splits_last_reply_and_skips_unusable_pairs():
    prefix = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:"
    records = [
        {"chosen": prefix + " Sure. ", "rejected": prefix + " No."},
        {"chosen": prefix + " Same", "rejected": prefix + " Same"},
        {"chosen": prefix + "  ", "rejected": prefix + " No."},
        {"chosen": prefix + " A", "rejected": "\n\nHuman: other\n\nAssistant: B"},
        {"chosen": "no turns", "rejected": "at all"},
    ]

    rows = hh_rlhf(records, "mem")

    assert rows == [{"prompt": prefix, "chosen": "Sure.", "rejected": "No."}]


def test_hh_rlhf_long_prompt_is_cut_at_a_human_turn():
    prefix = "\n\nHuman: " + "x" * 50 + "\n\nAssistant: ok\n\nHuman: short\n\nAssistant:"
    records = [{"chosen": prefix + " yes", "rejected": prefix + " no"}]

    (row,) = hh_rlhf(records, "mem", max_prompt_chars=40)

    assert row["prompt"] == "\n\nHuman: short\n\nAssistant:"


def test_unknown_format_raises_config_error_listing_known_ones():
    with pytest.raises(ConfigError, match="unknown data format 'alpaca'") as caught:
        load_rows("synthetic:arithmetic", "alpaca")
    for name in FORMATS:
        assert name in str(caught.value)


def test_unknown_format_option_raises_config_error():
    with pytest.raises(ConfigError, match="has no option prompt_col"):
        load_rows("synthetic:arithmetic", "prompt_response", prompt_col="x")


def test_format_that_yields_no_rows_is_a_data_error(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no annotations"}])

    with pytest.raises(DataError, match="no usable rows"):
        load_rows(path, "gsm8k_calc")


# --- synthetic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["text", "arithmetic", "preferences"])
def test_synthetic_data_is_deterministic_for_a_seed(name):
    assert synthetic_records(name, n=300, seed=3) == synthetic_records(name, n=300, seed=3)
    assert synthetic_records(name, n=300, seed=3) != synthetic_records(name, n=300, seed=4)


def test_synthetic_arithmetic_references_are_correct():
    rows = load_rows("synthetic:arithmetic", "prompt_reference")

    assert len(rows) == 2000
    assert len({r["prompt"] for r in rows}) == len(rows)
    for row in rows:
        a, op, b = re.fullmatch(r"(\d{1,2})([+-])(\d{1,2})", row["prompt"]).groups()
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert expected >= 0
        assert row["reference"] == row["response"] == str(expected)


def test_synthetic_preferences_choose_the_right_result():
    rows = load_rows("synthetic:preferences", "pairs")

    for row in rows:
        a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)", row["prompt"]).groups()
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert row["chosen"] == str(expected)
        assert row["rejected"] != row["chosen"] and int(row["rejected"]) >= 0


def test_synthetic_text_is_printable_ascii_of_corpus_size():
    (corpus,) = load_rows("synthetic:text", "text")

    assert 50_000 <= len(corpus) <= 200_000
    assert set(corpus) <= set(string.printable)
    assert re.search(r"^\d+\+\d+=\d+\.$", corpus, re.MULTILINE)


def test_unknown_synthetic_name_lists_known_ones():
    with pytest.raises(DataError, match="unknown synthetic data set.*arithmetic"):
        load_records("synthetic:poems")


# --- split -------------------------------------------------------------------------------------


def test_split_rows_is_deterministic_and_partitions_rows():
    rows = list(range(100))

    train, held_out = split_rows(rows, 0.1, seed=7)

    assert (train, held_out) == split_rows(rows, 0.1, seed=7)
    assert len(held_out) == 10 and sorted(train + held_out) == rows
    assert split_rows(rows, 0.1, seed=8) != (train, held_out)


def test_split_rows_holds_out_at_least_one_row():
    assert [len(part) for part in split_rows([1, 2], 0.01, seed=0)] == [1, 1]
    assert split_rows([1, 2, 3], 0.0, seed=0)[1] == []
    with pytest.raises(ConfigError):
        split_rows([1, 2], 1.0, seed=0)


def test_gsm8k_calc_options_narrow_the_task():
    answer = "<<48/2=24>> <<3*4+1=13>> <<7/2=3.5>> <<1000-1=999>> <<-5+2=-3>>"
    rows = gsm8k_calc([{"answer": answer}], "x", max_operators=1, integer_results=True)
    assert [r["prompt"] for r in rows] == ["48/2", "1000-1", "-5+2"]
    short = gsm8k_calc([{"answer": answer}], "x", max_prompt_chars=4)
    assert [r["prompt"] for r in short] == ["48/2", "7/2", "-5+2"]


def test_gsm8k_calc_scratchpad_works_the_digits_out_ones_first_for_a_fixed_share():
    from rlstack.verifiers.numeric import numeric_match

    answer = " ".join(f"<<{a}*{b}={a * b}>>" for a in range(10, 30) for b in range(2, 12))
    records = [{"answer": answer}, {"answer": "<<7/2=3.5>>"}]
    worked = gsm8k_calc(records, "x", scratchpad=1.0)
    assert worked[0] == {"prompt": "10*2", "reference": "20", "response": "02=20"}
    assert worked[-1]["response"] == "3.5"  # only whole numbers are worked out
    assert all(numeric_match(r["prompt"], r["response"], r["reference"]) == 1.0 for r in worked)
    some = gsm8k_calc(records, "x", scratchpad=0.3)
    share = sum("=" in r["response"] for r in some) / len(some)
    assert 0.2 < share < 0.4
    assert some == gsm8k_calc(records, "x", scratchpad=0.3)  # the same rows every time
    assert [r["response"] for r in gsm8k_calc(records, "x")] == [r["reference"] for r in some]
    with pytest.raises(ConfigError, match="scratchpad"):
        gsm8k_calc(records, "x", scratchpad=1.5)


def test_row_slices_give_disjoint_parts_of_a_source(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(10)))
    first = load_rows(f"{path}[:4]", "text")
    rest = load_rows(f"{path}[4:]", "text")
    middle = load_rows(f"{path}[4:9]", "text", max_rows=3)
    assert first == ["0", "1", "2", "3"]
    assert rest == [str(i) for i in range(4, 10)]
    assert middle == ["4", "5", "6"]
    assert load_rows("synthetic:text[:1]", "text") == load_rows("synthetic:text", "text")[:1]
    with pytest.raises(ConfigError, match=r"empty row slice \[5:2\]"):
        load_rows(f"{path}[5:2]", "text")
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "missing.jsonl[:3]"), "text")
    for bad in ("[-3:]", "[1:9:2]", "[a:b]"):
        with pytest.raises(ConfigError, match=r"a row slice is \[start:stop\]"):
            load_rows(f"d.jsonl{bad}", "text")


def _stage_data(tmp_path, *overrides: str):
    from rlstack.config import load_config
    from rlstack.stages.context import StageContext

    cfg = load_config(None, list(overrides))
    return StageContext(cfg, tmp_path, None, {})


def test_held_out_rows_whose_prompt_is_a_training_prompt_are_dropped(tmp_path):
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "reference": "1"}) + "\n" for p in "abc"))
    held.write_text("".join(json.dumps({"prompt": p, "reference": "1"}) + "\n" for p in "bcde"))
    data = [f"grpo.data.train={train}", f"grpo.data.eval={held}"]

    _, kept = _stage_data(tmp_path, *data).load_data("grpo")
    _, everything = _stage_data(tmp_path, *data, "grpo.data.drop_seen_prompts=false").load_data(
        "grpo"
    )

    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text(json.dumps({"prompt": "d", "response": "1"}) + "\n")
    sft = [f"sft.data.train={earlier}", "sft.data.format=prompt_response"]
    _, after_sft = _stage_data(tmp_path, *data, *sft).load_data("grpo")

    assert [r["prompt"] for r in kept] == ["d", "e"]
    assert [r["prompt"] for r in after_sft] == ["e"]
    assert [r["prompt"] for r in everything] == ["b", "c", "d", "e"]


def test_stage_given_rows_without_the_fields_it_reads_names_stage_and_format(tmp_path):
    ctx = _stage_data(
        tmp_path,
        "reward_model.data.train=synthetic:arithmetic",
        "reward_model.data.format=prompt_reference",
    )
    with pytest.raises(ConfigError, match=r"reward_model.data.format: prompt_reference rows .*"):
        ctx.load_data("reward_model")
    ctx = _stage_data(tmp_path, "grpo.data.train=synthetic:preferences", "grpo.data.format=pairs")
    with pytest.raises(ConfigError, match=r"grpo needs \{prompt, reference\}"):
        ctx.load_data("grpo")


def test_data_errors_of_a_stage_name_the_key_of_its_data(tmp_path):
    good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "a", "response": "b"}] * 4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c"}\n', encoding="utf-8")

    ctx = _stage_data(tmp_path, f"sft.data.train={bad}")
    with pytest.raises(DataError, match=r"^sft\.data\.train: .*bad\.jsonl:3: missing field"):
        ctx.load_data("sft")
    ctx = _stage_data(tmp_path, f"sft.data.train={good}", f"sft.data.eval={bad}")
    with pytest.raises(DataError, match=r"^sft\.data\.eval: .*bad\.jsonl:3: missing field"):
        ctx.load_data("sft")
    ctx = _stage_data(tmp_path, f"grpo.data.train={tmp_path / 'absent.jsonl'}")
    with pytest.raises(DataError, match=r"^grpo\.data\.train: data file not found"):
        ctx.load_data("grpo")


def test_characters_outside_the_vocabulary_are_reported_once_per_data_set(tmp_path, caplog):
    rows = [{"prompt": f"{i}+1", "response": "2"} for i in range(50)]
    rows[3] = {"prompt": "\u4f60\u597d 1+1", "response": "2 \U0001f600"}
    rows[7] = {"prompt": "caf\u00e9 \u201cq\u201d", "response": "\u4f60"}  # only \u4f60 is unknown
    path = _write_jsonl(tmp_path / "chars.jsonl", rows)
    ctx = _stage_data(tmp_path, "stages=[sft]", f"sft.data.train={path}")

    with caplog.at_level("WARNING"):
        ctx.preflight()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "sft.data.train" in warnings[0] and "chars.jsonl" in warnings[0]
    assert "2 of 50 rows" in warnings[0] and "4 characters" in warnings[0]
    assert "'\u4f60' (U+4F60" in warnings[0] and "<unk>" in warnings[0]

    caplog.clear()
    clean = _write_jsonl(tmp_path / "clean.jsonl", [rows[7] | {"response": "x"}] * 3)
    with caplog.at_level("WARNING"):
        _stage_data(tmp_path, "stages=[sft]", f"sft.data.train={clean}").preflight()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_sft_learns_the_chosen_reply_of_preference_rows(tmp_path):
    from rlstack.model.tokenizer import build_tokenizer
    from rlstack.stages.batches import sft_batch

    ctx = _stage_data(tmp_path, "sft.data.train=synthetic:preferences", "sft.data.format=pairs")
    train, _ = ctx.load_data("sft")
    tok = build_tokenizer(256)
    batch = sft_batch(tok, train[:1], 256)
    learned = batch["input_ids"][0][batch["loss_mask"][0].bool()].tolist()
    assert tok.decode(learned[:-1]).replace(" ", "") == train[0]["chosen"].replace(" ", "")
