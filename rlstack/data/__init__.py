"""Data layer: load records from files, the hub or embedded synthetic sets; convert them to rows.

    from rlstack.data import load_rows, split_rows
    rows = load_rows("synthetic:arithmetic", "prompt_response")
    train, held_out = split_rows(rows, eval_fraction=0.05, seed=0)

`sources.py` reads records, `formats.py` turns them into the rows the stages use, `synthetic.py`
builds the embedded default data and `split.py` holds out an evaluation set.
"""

from rlstack.data.formats import FORMATS, load_rows
from rlstack.data.sources import load_records
from rlstack.data.split import split_rows
from rlstack.data.synthetic import synthetic_records

__all__ = ["FORMATS", "load_records", "load_rows", "split_rows", "synthetic_records"]
