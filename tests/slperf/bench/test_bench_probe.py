"""Peak memory of a federation's children, read through the launcher's hooks."""
from __future__ import annotations

import os

import pytest

from slperf.bench.probe import peak_rss_bytes, read_status_kib


def test_peak_rss_of_a_live_process():
    assert read_status_kib(os.getpid(), "VmRSS") > 0
    assert peak_rss_bytes(os.getpid()) >= read_status_kib(os.getpid(), "VmRSS") * 1024
    assert peak_rss_bytes(2 ** 22 + 12345) is None  # no such process


def test_federation_probe_reads_the_children_peaks_and_restores_federation():
    import subprocess
    import sys
    from types import SimpleNamespace

    from slperf import federation
    from slperf.bench.probe import FederationProbe

    original = (federation.Federation.start, federation.Federation.stop)
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
             for _ in range(2)]
    try:
        with FederationProbe(poll_seconds=0.05) as probe:
            assert (federation.Federation.start, federation.Federation.stop) != original
            probe._federation = SimpleNamespace(server=procs[0], clients={"c1": procs[1]})
            probe.sample()
            peaks = probe.peaks
            with pytest.raises(RuntimeError, match="already open"):
                FederationProbe().__enter__()
        assert (federation.Federation.start, federation.Federation.stop) == original
        assert peaks["server"] > 1 << 20 and peaks["clients"]["c1"] > 1 << 20
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait(timeout=10)
