"""Load raw records from a local file, a local dataset folder, the hub or the embedded data.

    load_records("../shared/data/gsm8k/train.jsonl")        # one dict per JSON line
    load_records("synthetic:arithmetic")                    # built in memory, no files
    load_records("openai/gsm8k", split="test", subset="main")  # datasets.load_dataset (network)

A record is a plain dict as stored in the source; `formats.py` turns records into the rows the
stages use. Every problem with the source itself (missing file, malformed line, failed download)
raises `DataError` with the place in the message: `path:line` for text files, the source name
otherwise. `load_records_with_lines` also gives each record's line in a JSONL or CSV file, so that
a problem found later in a record (a missing field) names its line too.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

from rlstack.data.synthetic import synthetic_records
from rlstack.errors import ConfigError, DataError, one_line

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
ROW_SLICE = re.compile(r"(?P<source>.+)\[(?P<start>\d*):(?P<stop>\d*)\]")
ANY_SLICE = re.compile(r".+\[[^\[\]]*:[^\[\]]*\]")  # what a user may have meant as a slice

# Longest suffix first, so that "x.jsonl.gz" is not taken for a ".gz" of unknown kind.
FILE_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".txt", ".csv", ".parquet")


class Lines(NamedTuple):
    """Where the records of a file with lines start: `numbers[i]` is record i's 1-based line."""

    file: str  # the file as the source names it, without a row slice
    numbers: list[int]


def load_records(
    source: str, *, split: str = "train", max_rows: int | None = None, subset: str | None = None
) -> list[dict]:
    """Load the records of a data source as a list of dicts.

    Args:
        source: one of
            - `synthetic:<name>`: embedded data from `synthetic.py` (no files, no network);
            - a local file ending in .jsonl, .jsonl.gz, .json, .json.gz, .txt, .csv or .parquet
              (.txt gives a single record `{"text": <whole file>}`);
            - a local directory, read with `datasets.load_dataset(directory, split=split)`;
            - otherwise a hub dataset name such as `owner/name`, read with
              `datasets.load_dataset(name, split=split)` (needs a network or a warm cache).
        split: the split to read from a directory or hub dataset; ignored for files.
        max_rows: keep at most this many records (the first ones); None keeps all.
        subset: the configuration of a directory or hub dataset (`name` of
            `datasets.load_dataset`, e.g. "main" for openai/gsm8k); None: its default. A file
            or synthetic source has none.

    A source may end in a row slice, `path/to/file.jsonl[:2000]` or `name[2000:]` (Python
    slice syntax, non-negative bounds), to give stages disjoint parts of one data set.

    Returns:
        The records, in source order.

    Raises:
        DataError: the file is missing or unreadable, a row is malformed, or the hub load failed.
        ConfigError: max_rows is negative, or a subset is given for a file or synthetic data.
    """
    return load_records_with_lines(source, split=split, max_rows=max_rows, subset=subset)[0]


def load_records_with_lines(
    source: str, *, split: str = "train", max_rows: int | None = None, subset: str | None = None
) -> tuple[list[dict], Lines | None]:
    """`load_records`, with the line each record starts at in a JSONL or CSV file (blank lines
    are skipped, so lines and record numbers differ); None for a source without lines (a JSON
    array, parquet, a data set folder, the hub, synthetic data)."""
    if max_rows is not None and max_rows < 0:
        raise ConfigError(f"{source}: max_rows must be >= 0, got {max_rows}")
    looks_sliced = ANY_SLICE.fullmatch(source)
    sliced = ROW_SLICE.fullmatch(source)
    if looks_sliced and not sliced and not Path(source).expanduser().exists():
        raise ConfigError(
            f"{source}: a row slice is [start:stop] with whole numbers >= 0 "
            "(like data.jsonl[:2000] or data.jsonl[2000:])"
        )
    if sliced and not Path(source).expanduser().exists():
        start, stop = int(sliced["start"] or 0), sliced["stop"]
        stop = None if stop == "" else int(stop)
        if stop is not None and stop < start:
            raise ConfigError(f"{source}: empty row slice [{start}:{stop}]")
        if max_rows is not None:
            stop = start + max_rows if stop is None else min(stop, start + max_rows)
        records, lines = load_records_with_lines(
            sliced["source"], split=split, max_rows=stop, subset=subset
        )
        records = records[start:stop]
        logger.info("kept records %d-%d of %s", start, start + len(records), sliced["source"])
        return records, None if lines is None else Lines(lines.file, lines.numbers[start:stop])

    path = Path(source).expanduser()
    if subset is not None and (source.startswith(SYNTHETIC_PREFIX) or path.is_file()):
        raise ConfigError(
            f"{source}: subset {subset!r} is given, but only a data set folder or a hub data set "
            "has subsets (configurations); remove it for a file"
        )
    lines = None
    if source.startswith(SYNTHETIC_PREFIX):
        records = synthetic_records(source[len(SYNTHETIC_PREFIX) :])
        records = records if max_rows is None else records[:max_rows]
    else:
        if path.is_dir():
            records = _load_with_datasets(str(path), source, split, max_rows, subset)
        elif path.exists():
            records, numbers = _load_file(path, source, max_rows)
            lines = None if numbers is None else Lines(source, numbers)
        elif _looks_local(source):
            raise DataError(f"data file not found: {source}")
        else:
            records = _load_with_datasets(source, source, split, max_rows, subset)

    logger.info("loaded %d records from %s", len(records), source)
    return records, lines


def _looks_local(source: str) -> bool:
    """True when `source` is meant as a local path rather than a hub dataset name."""
    return source.startswith(("/", ".", "~")) or _suffix(source) is not None


def _suffix(source: str) -> str | None:
    """The known file suffix that `source` ends with, or None."""
    lowered = source.lower()
    return next((s for s in FILE_SUFFIXES if lowered.endswith(s)), None)


def _load_file(path: Path, where: str, max_rows: int | None) -> tuple[list[dict], list[int] | None]:
    """Read one local file by its suffix: its records, and their lines when it has lines."""
    suffix = _suffix(path.name)
    if suffix is None:
        known = ", ".join(FILE_SUFFIXES)
        raise DataError(f"{where}: unsupported file type (known: {known})")

    gzipped = suffix.endswith(".gz")
    try:
        if suffix == ".parquet":
            return _read_parquet(path, where, max_rows), None
        if suffix.startswith(".jsonl"):
            with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
                return _take(jsonl_rows(f, where), max_rows)
        opener = gzip.open if gzipped else open
        newline = "" if suffix == ".csv" else None  # the csv module reads line ends itself
        with opener(path, "rt", encoding="utf-8-sig", newline=newline) as f:
            if suffix == ".txt":
                return [{"text": f.read()}], None
            if suffix == ".csv":
                return _take(_iter_csv(f, where), max_rows)
            return _read_json(f.read(), where, max_rows)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{where}: cannot read file ({one_line(e)})") from e


def _take(
    numbered: Iterator[tuple[int, dict]], max_rows: int | None
) -> tuple[list[dict], list[int]]:
    """The first `max_rows` (line, record) pairs (all when None) as (records, lines), reading no
    further."""
    pairs = list(itertools.islice(numbered, max_rows))
    return [record for _, record in pairs], [line for line, _ in pairs]


def jsonl_rows(lines: Iterable[bytes] | Iterable[str], where: str) -> Iterator[tuple[int, dict]]:
    """Yield `(line number, dict)` per non-blank JSON line; a bad line raises DataError at
    `where:line`.

    Byte lines are decoded here, one at a time, so that invalid UTF-8 is reported with its line.
    """
    for line_no, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}:{line_no}: row is not valid UTF-8 ({e})") from e
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}:{line_no}: malformed JSON row ({e})") from e
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise DataError(f"{where}:{line_no}: row is not a JSON object (got {kind})")
        yield line_no, row


def _read_json(text: str, where: str, max_rows: int | None) -> tuple[list[dict], list[int] | None]:
    """Read a .json file: an array of objects (no lines), or JSON lines under a .json name."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise DataError(f"{where}:{e.lineno}: malformed JSON ({e})") from e
        # Several top-level values: the file holds JSON lines.
        return _take(jsonl_rows(text.split("\n"), where), max_rows)

    if not isinstance(data, list):
        kind = type(data).__name__
        raise DataError(f"{where}: expected a JSON array of objects or JSON lines, got {kind}")
    for row_no, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise DataError(f"{where}: row {row_no} is not a JSON object (got {kind})")
    return (data if max_rows is None else data[:max_rows]), None


def _iter_csv(f: IO[str], where: str) -> Iterator[tuple[int, dict]]:
    """Yield `(line the row starts at, dict keyed by the header)` per CSV row; a ragged row raises
    DataError."""
    reader = csv.reader(f)
    try:
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines
            if not fields:
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"{where}:{reader.line_num}: row has {len(fields)} fields, "
                    f"the header has {len(header)}"
                )
            yield line, dict(zip(header, fields, strict=True))
    except csv.Error as e:
        raise DataError(f"{where}:{reader.line_num}: malformed CSV row ({e})") from e


def _read_parquet(path: Path, where: str, max_rows: int | None) -> list[dict]:
    """Read a parquet file with pyarrow (installed with `datasets`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{where}: cannot read parquet file ({one_line(e)})") from e
    if max_rows is not None:
        table = table.slice(0, max_rows)
    return table.to_pylist()


def _load_with_datasets(
    name: str, where: str, split: str, max_rows: int | None, subset: str | None
) -> list[dict]:
    """Load a local dataset folder or a hub dataset with `datasets.load_dataset`."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, name=subset, split=split)
    except Exception as e:  # network, authentication and format errors all land here
        what = f"split {split!r}" + (f", subset {subset!r}" if subset is not None else "")
        hint = ""
        if subset is None and "config name is missing" in str(e).lower():
            hint = "; name one with the data's `subset` key (`eval_subset` for `eval`)"
        raise DataError(f"cannot load dataset {where!r} ({what}): {one_line(e)}{hint}") from e

    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return dataset.to_list()
