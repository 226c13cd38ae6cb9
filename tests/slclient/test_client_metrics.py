"""The client daemon's Prometheus endpoint (``slperf client --metrics-address``) on a real client daemon and a real
server over mutual TLS on loopback: scraped before, during and after a run, its counters move (bytes and messages
per direction, steps and their compute time); the step histogram accounts for every step the run made; and when the
server goes away the ended session's bytes stay counted while the reconnects and the failed attempt's status code
are counted. Also: the StepClock's split of a pass into steps, on a fake clock."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from slperf import __version__
from slperf.common.metrics_http import METRICS_READY_PREFIX
from slperf.common.protocol.types import Phase
from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.slclient.metrics import ClientMetrics, StepClock
from tests.conftest import child_env, client_args, slperf_cmd

CONFIG = {
    "paradigm": "vanilla",
    "dataset": "mnist",
    "client_ids": ["c1"],
    "clients": 1,
    "epochs": 3,
    "batch_size": 32,
    "max_train_samples": 300,
    "max_test_samples": 100,
    "seed": 0,
}

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _get(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def _line(proc: subprocess.Popen, wanted: str) -> str:
    """The daemon's next output line containing ``wanted`` (its stdout and log share one pipe)."""
    seen = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        seen.append(line)
        if wanted in line:
            return line
    raise AssertionError(f"the client exited ({proc.wait()}) without printing {wanted!r}:\n" + "\n".join(seen[-40:]))


def test_the_client_metrics_endpoint_counts_a_run_and_a_lost_server(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    args = ["client", *client_args(port, "c1", pki), "--metrics-address", "127.0.0.1:0", "--reconnect-delay", "0.2"]
    client = subprocess.Popen(slperf_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env())
    daemons.procs.append(client)
    ready = _line(client, METRICS_READY_PREFIX)
    metrics_port = int(ready[ready.index(METRICS_READY_PREFIX) + len(METRICS_READY_PREFIX) :])

    before = _scrape(metrics_port)  # no run yet: nothing computed, whether or not it is connected already
    assert _get(before, "slperf_client_info", client="c1", version=__version__) == 1
    assert _get(before, "slperf_client_steps_total", phase="train") == 0
    assert sum(v for (n, _), v in before.items() if n == "slperf_client_connection_state") == 1

    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    try:
        run_id = op.start_run(yaml.safe_dump(CONFIG), "watched")
        during = None
        for kind, payload, status in op.watch(run_id):
            if kind == "round" and payload["round"] == 0:
                during = _scrape(metrics_port)  # rounds 1 and 2 are still to come
            if status.state in ("finished", "failed", "stopped"):
                break
        assert status.state == "finished", status.error
    finally:
        op.close()
    # The client's PhaseDone of every pass came after its counters were updated, so the run's end is all there.
    after = _scrape(metrics_port)

    assert during is not None
    for name in ("slperf_client_bytes_total", "slperf_client_messages_total"):
        for direction in ("up", "down"):
            values = [_get(s, name, direction=direction) for s in (before, during, after)]
            assert values[0] < values[1] < values[2], (name, direction, values)
    # Steps of completed passes: three training passes of S steps each; by round 0's record, one or two were done.
    per_round = _get(after, "slperf_client_steps_total", phase="train") / 3
    assert per_round >= 1 and per_round == int(per_round), per_round
    assert _get(during, "slperf_client_steps_total", phase="train") in (per_round, 2 * per_round)
    eval_steps = [_get(s, "slperf_client_steps_total", phase="eval") for s in (during, after)]
    assert 0 < eval_steps[0] < eval_steps[1], eval_steps
    # Every vanilla step crosses the cut: the histogram holds each one, and its sum is the passes' compute time.
    for phase in ("train", "eval"):
        assert _get(after, "slperf_client_step_seconds_count", phase=phase) == _get(
            after, "slperf_client_steps_total", phase=phase
        )
        total = _get(after, "slperf_client_compute_seconds_total", phase=phase)
        assert 0 < total and _get(after, "slperf_client_step_seconds_sum", phase=phase) == pytest.approx(total)
    train_compute = [_get(s, "slperf_client_compute_seconds_total", phase="train") for s in (during, after)]
    assert 0 < train_compute[0] < train_compute[1], train_compute
    # During the run: connected in the one session it had, set up for the run, at its round 0 or 1.
    assert _get(during, "slperf_client_connection_state", state="connected") == 1
    assert _get(during, "slperf_client_sessions_total") == 1
    (run_info,) = [dict(ls) for (n, ls), v in during.items() if n == "slperf_client_run_info" and v == 1]
    assert run_info["run_id"] == run_id and run_info["paradigm"] == "vanilla", run_info
    assert run_info["phase"] in ("train", "eval", "idle"), run_info
    assert _get(during, "slperf_client_run_round", run_id=run_id) in (0, 1)
    assert _get(after, "slperf_client_errors_total", code="UNAVAILABLE", where="session") == 0

    # The server goes away: the daemon keeps trying; the session's bytes stay counted.
    daemons.server_proc.terminate()
    daemons.server_proc.wait(timeout=60)
    _line(client, "cannot reach the server")  # logged after the failed attempt was counted
    lost = _scrape(metrics_port)
    assert _get(lost, "slperf_client_connection_state", state="connected") == 0
    assert _get(lost, "slperf_client_reconnects_total") >= 1
    assert _get(lost, "slperf_client_errors_total", code="UNAVAILABLE", where="session") >= 1
    assert _get(lost, "slperf_client_sessions_total") == 1
    for direction in ("up", "down"):
        assert _get(lost, "slperf_client_bytes_total", direction=direction) >= _get(
            after, "slperf_client_bytes_total", direction=direction
        )


@pytest.mark.slow  # starts a Python process of its own
def test_a_bad_metrics_address_is_a_usage_error(pki):
    args = ["client", *client_args(1, "c1", pki), "--metrics-address", "no-port"]
    proc = subprocess.run(slperf_cmd(*args), capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--metrics-address must be HOST:PORT" in proc.stderr and "Traceback" not in proc.stderr


class _FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_step_clock_splits_a_pass_into_steps_less_the_waits():
    now, observed = _FakeTime(), []
    clock = StepClock(observed.append, now)
    # Step 0: forward 1 s, send (wait 5 s), await the reply (wait 5 s).
    now.t += 1.0
    clock.link_call(0)
    now.t += 5.0
    clock.link_done()
    clock.link_call(0)
    now.t += 5.0
    clock.link_done()
    # Step 0's backward 2 s and step 1's forward 1 s, then step 1's send (wait 5 s).
    now.t += 3.0
    clock.link_call(1)
    assert observed == [1.0]  # step 0 so far: its forward (its backward is counted with step 1's forward)
    now.t += 5.0
    clock.link_done()
    # Step 1's backward 2 s, then the pass ends.
    now.t += 2.0
    assert clock.finish() == 1.0 + 3.0 + 2.0
    assert observed == [1.0, 5.0]
    assert sum(observed) == clock.total


def test_a_pass_without_link_steps_observes_no_step():
    now, observed = _FakeTime(), []
    clock = StepClock(observed.append, now)
    now.t += 4.0
    assert clock.finish() == 4.0  # FedAvg's local pass: all compute, no step crossed the cut
    assert observed == []


def test_a_pass_counts_the_process_cpu_time_it_used():
    now, cpu, observed = _FakeTime(), _FakeTime(), []
    clock = StepClock(observed.append, now, cpu)
    now.t += 4.0
    cpu.t += 2.0  # half a core while it computed
    clock.link_call(0)
    now.t += 10.0
    cpu.t += 1.0  # the link's work while the daemon waits: not the computation's
    clock.link_done()
    now.t += 1.0
    cpu.t += 0.5
    clock.finish()
    assert (clock.total, clock.cpu) == (5.0, 2.5)
    metrics = ClientMetrics("c1")
    real = metrics.pass_started(0, Phase.TRAIN)
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # spends CPU: the counter must see it
        pass
    metrics.pass_ended(Phase.TRAIN, real, steps=1)
    assert metrics.pass_cpu.labels(phase="train")._value.get() >= 0.05
