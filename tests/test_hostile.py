"""Every public function against a table of hostile inputs (tests/hostile_cases.py), in child processes.

A case passes when the call gave a clear ValueError/TypeError (nothing
written) or a correct result. The table runs in one child process; should a
case crash it (a signal, an abort), the case is reported and the rest of the
table runs in a new child, so that one crash hides no other result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hostile_cases  # noqa: E402

LABELS = list(hostile_cases.all_cases())
# The child imports robustagg as this process does (the tree this test belongs to comes first).
_CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))


def _run_table() -> dict[int, dict]:
    results: dict[int, dict] = {}
    first = 0
    while first < len(LABELS):
        child = subprocess.run(
            [sys.executable, os.path.join(HERE, "hostile_cases.py"), str(first)],
            capture_output=True,
            text=True,
            timeout=900,
            env=_CHILD_ENV,
        )
        started = None
        for line in child.stdout.splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results[record["index"]] = record
        if child.returncode == 0:
            break
        crashed = started if started is not None else first
        results[crashed] = {
            "index": crashed,
            "label": LABELS[crashed],
            "ok": False,
            "detail": f"the process died (exit status {child.returncode}): {child.stderr[-2000:]}",
        }
        first = crashed + 1
    return results


@pytest.fixture(scope="module")
def table() -> dict[int, dict]:
    return _run_table()


@pytest.mark.parametrize("index", range(len(LABELS)), ids=LABELS)
def test_hostile_input(table, index):
    record = table.get(index)
    assert record is not None, "the case did not run"
    assert record["ok"], record["detail"]
