"""The Ray executor on a local Ray instance (one per module, 2 CPUs): cells as Ray tasks whose rows land in the
driver's results.jsonl, failures (a raising runner, a dying worker) isolated to their cells, resume, the
suite's resources on the tasks, worker reuse; and one real federation cell through ``slperf bench --executor
ray``. Fake runners are module functions, shipped to the workers by value."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench_fakes
import pytest
import yaml
from click.testing import CliRunner

from slperf.bench.executors import ExecutorError, RayExecutor
from slperf.bench.run import run_suite
from slperf.bench.suite import Cell
from slperf.cli import main

KEYS = ["centralized/mnist/all/s0", "vanilla/mnist/homo/c2/s0", "splitfed_v1/mnist/homo/c2/s0"]  # matrix order


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module's Ray tests: starting one takes seconds. Test code that runs in
    the workers is sent by value, since the workers cannot import this folder."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(bench_fakes)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _suite(**overrides: Any):
    return bench_fakes.small_suite(**overrides)


def _rows(out: Path) -> list[dict[str, Any]]:
    with open(out / "results.jsonl") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _runner(log: Path, crash: str = "", boom: str = ""):
    """A fast fake runner that notes each call in ``log`` (one line per call, from whatever process) and says
    where it ran; it raises for the cell ``boom`` and kills its worker for the cell ``crash``."""

    def run(cell: Cell, work_dir: Path) -> dict[str, Any]:
        with open(log, "a") as handle:
            handle.write(cell.key + "\n")
        if cell.key == boom:
            raise RuntimeError("boom")
        if cell.key == crash:
            os._exit(3)
        figures = dict(bench_fakes.FakeRunner()(cell, work_dir))
        import ray
        import torch

        seen = torch.__dict__.setdefault("_cells_seen_by_this_import", [])
        figures.update(
            pid=os.getpid(),
            torch_cells_before=len(seen),
            assigned=ray.get_runtime_context().get_assigned_resources(),
        )
        seen.append(cell.key)
        return figures

    return run


@pytest.mark.usefixtures("local_ray")
@pytest.mark.timeout(120)
def test_cells_run_as_ray_tasks_and_their_rows_land_in_results(tmp_path):
    out = tmp_path / "out"
    outcome = run_suite(
        _suite(),
        out,
        runner=_runner(tmp_path / "calls"),
        show_progress=False,
        echo=lambda m: None,
        executor=RayExecutor(),
    )
    assert sorted(outcome.ran) == sorted(KEYS) and not outcome.failed
    rows = {r["key"]: r for r in _rows(out)}
    assert sorted(rows) == sorted(KEYS)
    for row in rows.values():
        assert row["status"] == "ok" and row["pid"] != os.getpid(), "each cell ran in a Ray worker"
        assert row["worker"].startswith(f"pid {row['pid']} on ")
        assert row["total_seconds"] is not None and row["expected_seconds"] > 0
    assert [r["key"] for r in outcome.rows] == KEYS, "the report keeps matrix order, whatever finished first"
    assert (out / "report.md").stat().st_size > 0


@pytest.mark.usefixtures("local_ray")
@pytest.mark.timeout(120)
def test_a_raising_cell_and_a_dying_worker_fail_only_their_cells_and_a_rerun_retries_just_them(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls"
    boom, crash = KEYS[1], KEYS[2]
    messages: list[str] = []
    outcome = run_suite(
        _suite(),
        out,
        runner=_runner(log, crash=crash, boom=boom),
        show_progress=False,
        echo=messages.append,
        executor=RayExecutor(),
    )
    assert sorted(outcome.failed) == sorted([boom, crash])
    rows = {r["key"]: r for r in _rows(out)}
    assert rows[KEYS[0]]["status"] == "ok"
    assert rows[boom]["status"] == "failed" and rows[boom]["error"] == "RuntimeError: boom"
    assert rows[crash]["status"] == "failed" and "Worker" in rows[crash]["error"], rows[crash]["error"]
    assert log.read_text().splitlines().count(crash) == 1, "Ray does not retry a cell whose worker died"
    assert any(f"FAILED {crash}" in m for m in messages)

    again = run_suite(
        _suite(), out, runner=_runner(log), show_progress=False, echo=lambda m: None, executor=RayExecutor()
    )
    assert again.skipped == [KEYS[0]] and sorted(again.ran) == sorted([boom, crash]) and not again.failed
    assert {r["key"]: r["status"] for r in again.rows} == dict.fromkeys(KEYS, "ok")


@pytest.mark.usefixtures("local_ray")
@pytest.mark.timeout(120)
def test_the_suites_resources_reach_the_tasks_and_cells_reuse_one_worker_and_its_torch(tmp_path):
    # 2 CPUs per cell on a 2-CPU instance: one cell at a time, all on one reused worker process
    outcome = run_suite(
        _suite(resources={"cpus": 2}),
        tmp_path / "out",
        runner=_runner(tmp_path / "calls"),
        show_progress=False,
        echo=lambda m: None,
        executor=RayExecutor(),
    )
    rows = sorted(outcome.rows, key=lambda r: r["torch_cells_before"])
    assert all(r["assigned"] == {"CPU": 2.0} for r in rows), [r["assigned"] for r in rows]
    assert len({r["pid"] for r in rows}) == 1, "Ray reused its worker process for every cell"
    before = [r["torch_cells_before"] for r in rows]  # the worker may have served earlier tests' cells too
    assert before == [before[0], before[0] + 1, before[0] + 2], "one torch import served every cell"


@pytest.mark.usefixtures("local_ray")
@pytest.mark.timeout(60)
def test_a_cell_bigger_than_every_node_is_refused_before_anything_runs(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls"
    with pytest.raises(ExecutorError, match=r"3 CPU\(s\), 0 GPU\(s\).*no node.*2 CPU/0 GPU.*forever"):
        run_suite(
            _suite(resources={"cpus": 3}),
            out,
            runner=_runner(log),
            show_progress=False,
            echo=lambda m: None,
            executor=RayExecutor(),
        )
    with pytest.raises(ExecutorError, match="GPU"):
        run_suite(
            _suite(resources={"gpus": 1}),
            out,
            runner=_runner(log),
            show_progress=False,
            echo=lambda m: None,
            executor=RayExecutor(),
        )
    assert not log.exists() and not (out / "results.jsonl").exists()


@pytest.mark.usefixtures("local_ray")
@pytest.mark.timeout(60)
def test_cuda_cells_without_gpus_are_refused_since_ray_would_hide_the_gpus(tmp_path):
    suite = _suite(base={**bench_fakes.suite_dict()["base"], "device": "cuda"})
    with pytest.raises(ExecutorError, match=r"CUDA.*resources: \{gpus: 1\}"):
        run_suite(
            suite,
            tmp_path / "out",
            runner=_runner(tmp_path / "calls"),
            show_progress=False,
            echo=lambda m: None,
            executor=RayExecutor(),
        )


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
@pytest.mark.timeout(300)
def test_real_cells_end_to_end_through_slperf_bench_executor_ray_two_federations_at_once(tmp_path):
    suite_file = tmp_path / "micro.yaml"
    suite_file.write_text(
        yaml.safe_dump(
            {
                "name": "micro",
                "base": {
                    "model": "lenet",
                    "epochs": 1,
                    "batch_size": 32,
                    "lr": 0.05,
                    "max_train_samples": 300,
                    "max_test_samples": 100,
                    "torch_threads": 1,
                },
                # two federation cells, 1 CPU each on 2 CPUs: they run at the same time, each its own servers
                "matrix": {
                    "paradigms": ["splitfed_v1", "vanilla"],
                    "datasets": ["mnist"],
                    "partitions": ["homo"],
                    "clients": [2],
                    "seeds": [0],
                },
                "centralized": False,
            }
        )
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["bench", "--suite", str(suite_file), "--out", str(out), "--no-progress", "--executor", "ray"]
    )
    rows = {r["key"]: r for r in _rows(out)}
    assert result.exit_code == 0, [r.get("error") for r in rows.values()]
    assert "2 cell(s) run, 0 already done, 0 failed" in result.output
    assert sorted(rows) == ["splitfed_v1/mnist/homo/c2/s0", "vanilla/mnist/homo/c2/s0"]
    for fed in rows.values():
        assert fed["status"] == "ok" and fed["rounds"] == 1 and 0 < fed["final_accuracy"] <= 1
        assert fed["bytes_up"] > 0 and fed["peak_rss_client_max_mb"] > 50 and fed["worker"].startswith("pid ")
        assert Path(fed["run_dir"], "summary.json").exists(), "on one node the run folder is the driver's"
        assert Path(fed["run_dir"]).is_relative_to(out.resolve() / "runs")
    assert len({Path(r["run_dir"]).parent for r in rows.values()}) == 2, "each cell had a runs folder of its own"


def test_ray_missing_is_one_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra installed
    with pytest.raises(ExecutorError, match=r"pip install 'slperf\[ray\]'"):
        RayExecutor()
    result = CliRunner().invoke(main, ["bench", "--suite", "quick", "--out", str(tmp_path), "--executor", "ray"])
    assert result.exit_code != 0 and "pip install 'slperf[ray]'" in result.output
    assert not (tmp_path / "results.jsonl").exists()


def test_ray_address_without_the_ray_executor_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--suite", "quick", "--out", str(tmp_path), "--ray-address", "auto"])
    assert result.exit_code != 0 and "--ray-address is for --executor ray" in result.output


@pytest.mark.timeout(120)
@pytest.mark.slow  # starts a Python process of its own
def test_the_local_executor_runs_cells_in_this_process_without_importing_ray(tmp_path):
    code = f"""
import signal
import sys
import threading
import time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import bench_fakes
from slperf.bench.executors import LocalExecutor
from slperf.bench.run import run_suite
out = run_suite(bench_fakes.small_suite(), {str(tmp_path)!r}, runner=bench_fakes.FakeRunner(), show_progress=False,
                echo=lambda m: None, executor=LocalExecutor())
assert len(out.ran) == 3 and not out.failed, out
assert "ray" not in sys.modules, "the local executor imported ray"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_rows(tmp_path)) == 3


def test_a_local_cell_bigger_than_the_machine_is_refused(tmp_path):
    with pytest.raises(ExecutorError, match="this machine has"):
        run_suite(
            _suite(resources={"cpus": 4096}),
            tmp_path,
            runner=bench_fakes.FakeRunner(),
            show_progress=False,
            echo=lambda m: None,
        )


@pytest.mark.timeout(60)
def test_a_ray_address_where_nothing_listens_is_one_error_not_minutes_of_retries(tmp_path):
    with socket.socket() as unused:  # a port nobody listens on: bound, never listening
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
        result = CliRunner().invoke(
            main, ["bench", "--suite", "quick", "--out", str(tmp_path), "--executor", "ray", "--ray-address", address]
        )
    assert result.exit_code != 0 and f"no Ray cluster answers at {address}" in result.output, result.output


def _long_vanilla_runner(marks: Path):
    """Fast fake cells, but vanilla's lasts a minute (it is the cell in flight when the suite is stopped); it
    notes when it starts and when Ray's cancel interrupts it."""

    def run(cell: Cell, work_dir: Path) -> dict[str, Any]:
        if cell.paradigm == "vanilla":
            (marks / "started").write_text("")
            try:
                # The cell's "work", not a wait for anything: short sleeps, since Ray interrupts a task only when it
                # runs Python code (a task inside one long C call is not: ray-project/ray#32954).
                for _ in range(600):
                    time.sleep(0.1)
            except KeyboardInterrupt:
                (marks / "cancelled").write_text("")
                raise
        return dict(bench_fakes.FakeRunner()(cell, work_dir))

    return run


@pytest.mark.usefixtures("local_ray")
@pytest.mark.timeout(120)
def test_ctrl_c_cancels_the_cells_in_flight_and_keeps_the_finished_ones(tmp_path):
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()

    over = threading.Event()

    def interrupt_once_started() -> None:
        # Only once the cell runs (a Ray worker can take long to start on a loaded machine; the test's timeout bounds
        # the wait): an interrupt before that would test something else. Polls a file another process writes.
        while not (marks / "started").exists():
            if over.wait(0.05):
                return
        os.kill(os.getpid(), signal.SIGINT)

    # Ctrl-C must reach this process as Python's KeyboardInterrupt. In whole-suite runs (not alone, not this file
    # alone) it did not: some earlier test leaves another SIGINT handler installed (not yet found; see the closing
    # note of session 4). This test is about the executor, so it installs the default handler it relies on.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_once_started, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_suite(
                _suite(),
                out,
                runner=_long_vanilla_runner(marks),
                show_progress=False,
                echo=lambda m: None,
                executor=RayExecutor(),
            )
    finally:
        over.set()
        signal.signal(signal.SIGINT, inherited)
    assert (marks / "cancelled").exists(), "the running cell was interrupted (a federation would stop its processes)"
    rows = {r["key"]: r for r in _rows(out)} if (out / "results.jsonl").exists() else {}
    assert KEYS[1] not in rows, "a cancelled cell leaves no row: the next run does it"
    assert all(r["status"] == "ok" for r in rows.values())
