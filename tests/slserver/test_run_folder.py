"""The run folder's metrics file after a crash: a torn last line (the server died while appending it, or the
disk filled) is not a record and is repaired away; a damaged line anywhere else is an error that names the file
and the line, never a bare ``JSONDecodeError``."""

from __future__ import annotations

import json
import logging

import pytest

from slperf.slserver.run_folder import MetricsError, RunFolder


def _record(round: int) -> dict[str, object]:
    return {"round": round, "test_accuracy": 0.5, "bytes_up": 10 * round}


def _folder_with(tmp_path, *rounds: int) -> RunFolder:
    folder = RunFolder(tmp_path / "r1")
    for rnd in rounds:
        folder.append_metrics(_record(rnd))
    return folder


@pytest.mark.parametrize(
    "tail",
    [
        b'{"round": 2, "test_acc',  # the append was cut short
        b'{"round": 2, "test_accuracy": 0.5, "bytes_up": 20}',  # all but its newline: not fsynced either
        b"\0\0\0\0\0\0\0\0",  # the file grew but its data never reached the disk
        b'{"round": 2, "na\xc3',  # cut inside a UTF-8 sequence
    ],
)
def test_a_torn_last_line_is_left_out_and_repaired_away_atomically(tmp_path, caplog, tail):
    folder = _folder_with(tmp_path, 0, 1)
    intact = folder.metrics_path.read_bytes()
    with open(folder.metrics_path, "ab") as handle:
        handle.write(tail)

    assert folder.read_metrics() == [_record(0), _record(1)]  # a reader tolerates it and changes nothing
    assert folder.metrics_path.read_bytes() == intact + tail
    with caplog.at_level(logging.WARNING, logger="slperf.server.run"):
        assert folder.repair_metrics() == [_record(0), _record(1)]
    assert folder.metrics_path.read_bytes() == intact
    assert str(folder.metrics_path) in caplog.text and f"{len(tail)} bytes" in caplog.text
    assert sorted(p.name for p in folder.path.iterdir()) == ["metrics.jsonl"]  # no temporary file left

    folder.append_metrics(_record(2))  # appending after the repair gives a whole file again
    assert folder.read_metrics() == [_record(0), _record(1), _record(2)]


def test_an_intact_file_is_not_rewritten_by_a_repair(tmp_path, caplog):
    folder = _folder_with(tmp_path, 0, 1)
    before = folder.metrics_path.stat()
    with caplog.at_level(logging.WARNING, logger="slperf.server.run"):
        assert folder.repair_metrics() == [_record(0), _record(1)]
    assert folder.metrics_path.stat().st_ino == before.st_ino and caplog.text == ""
    assert RunFolder(tmp_path / "empty").repair_metrics() == []


@pytest.mark.parametrize(
    "bad,why",
    [
        (b'{"round": 1, "test_acc\n', "is not JSON"),
        (b"\xff\xfe{}\n", "is not UTF-8"),
        (b"[1, 2]\n", "is not a round's record"),
        (b'{"test_accuracy": 0.5}\n', "is not a round's record"),
    ],
)
def test_a_damaged_line_before_the_last_is_an_error_naming_the_file_and_line(tmp_path, bad, why):
    folder = _folder_with(tmp_path, 0)
    with open(folder.metrics_path, "ab") as handle:
        handle.write(bad)
    folder.append_metrics(_record(2))
    before = folder.metrics_path.read_bytes()
    for read in (folder.read_metrics, folder.repair_metrics):
        with pytest.raises(MetricsError) as caught:
            read()
        assert str(caught.value).startswith(f"{folder.metrics_path} line 2 ") and why in str(caught.value)
        assert not isinstance(caught.value, json.JSONDecodeError)
    assert folder.metrics_path.read_bytes() == before  # a damaged file is left for the operator to look at
