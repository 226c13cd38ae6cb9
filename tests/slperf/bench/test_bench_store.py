"""The results store survives a crash mid-line: a cut-short row is ignored and that cell simply runs again."""

from __future__ import annotations

from slperf.bench.store import ResultsStore


def test_interrupted_results_line_is_ignored(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"key": "a", "status": "ok"})
    with open(store.path, "a") as handle:
        handle.write('{"key": "b", "sta')  # cut short by a crash
    assert list(store.load()) == ["a"]
