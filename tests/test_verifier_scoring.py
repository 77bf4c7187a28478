"""Verifier failures are scored with the failure score and counted by kind."""

import math

from rlstack.scorers.verifier import VerifierWorker


def test_failures_are_counted_by_kind_and_scored_as_failure(tmp_path):
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
    worker = VerifierWorker(f"{plugin}:score", failure_score=-1.0)
    items = [
        {"prompt": "p", "response": r, "reference": "7"} for r in ["7", "8", "raise", "nan", "text"]
    ]
    out = worker.score(items)
    assert out["scores"] == [1.0, 0.0, -1.0, -1.0, -1.0]
    assert out["failures"] == {"raised": 1, "nan": 1, "not_a_number": 1}
    assert all(math.isfinite(s) for s in out["scores"])
