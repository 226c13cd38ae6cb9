"""Peak memory of a federation's children, read through the launcher's hooks (nothing patched)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from slperf.bench.memory import peak_rss_bytes, read_status_kib
from slperf.bench.probe import FederationProbe, cpu_seconds
from slperf.federation import Federation

CHILD_BYTES = 32 << 20
# Fills (so touches) CHILD_BYTES of its own memory, then says so on stdout and waits for stdin to close: once
# the line has been read, the child's high-water mark is at least CHILD_BYTES, however loaded the machine is.
CHILD = "import sys; block = b'x' * int(sys.argv[1]); print('up', flush=True); sys.stdin.read()"


def start_child(nbytes: int = CHILD_BYTES) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(nbytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"  # blocks until the child holds its memory (or fails on EOF)
    return proc


def end_child(proc: subprocess.Popen) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def test_peak_rss_of_a_live_process():
    assert read_status_kib(os.getpid(), "VmRSS") > 0
    assert peak_rss_bytes(os.getpid()) >= read_status_kib(os.getpid(), "VmRSS") * 1024
    assert peak_rss_bytes(2**22 + 12345) is None  # no such process


def test_federation_probe_reads_the_children_peaks_through_the_launcher_hooks():
    original = (Federation.start, Federation.stop)
    procs = [start_child(), start_child()]
    try:
        federation = SimpleNamespace(server=procs[0], clients={"c1": procs[1]})
        started = []
        with FederationProbe(poll_seconds=0.05, on_start=started.append) as probe:
            assert probe.peaks == {"server": None, "clients": {}}  # nothing seen before the launcher says so
            probe.hooks.on_started(federation)
            assert started == [federation]
            probe.hooks.before_stop(federation)
            peaks = probe.peaks
            with pytest.raises(RuntimeError, match="already open"):
                probe.__enter__()
            with FederationProbe() as other:  # nothing global is patched, so probes coexist
                assert other.peaks == {"server": None, "clients": {}}
            assert (Federation.start, Federation.stop) == original
        assert (Federation.start, Federation.stop) == original
        assert peaks["server"] >= CHILD_BYTES and peaks["clients"]["c1"] >= CHILD_BYTES
        assert probe.pids == {"server": procs[0].pid, "c1": procs[1].pid}
        probe.hooks.before_stop(SimpleNamespace(server=None, clients={}))  # another federation: ignored
        assert probe.peaks == peaks
    finally:
        for proc in procs:
            end_child(proc)


# Spins until it has used about 0.3 s of CPU, then says so and waits for stdin to close.
SPINNER = "import sys, time\nwhile time.process_time() < 0.3: pass\nprint('up', flush=True); sys.stdin.read()"


def test_cpu_seconds_of_each_party_are_read_through_the_hooks():
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    idle = start_child(1 << 20)
    try:
        assert spinner.stdout is not None and spinner.stdout.readline() == b"up\n"
        assert cpu_seconds(2**22 + 12345) is None  # no such process
        federation = SimpleNamespace(server=idle, clients={"c1": spinner})
        with FederationProbe(poll_seconds=60) as probe:
            probe.hooks.on_started(federation)
            probe.hooks.before_stop(federation)
            cpu = probe.cpu
        assert set(cpu) == {"server", "c1"}
        assert cpu["c1"] >= 0.28  # clock ticks: 0.3 s of process time is at least 28 ticks of 10 ms
        assert cpu["server"] < cpu["c1"]
    finally:
        end_child(spinner)
        end_child(idle)
