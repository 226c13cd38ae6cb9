"""Start-up cost of a client daemon: process start to connected, to ready (run set up) and to the end of its
first training step, in fresh processes, several repetitions, medians.

    python -m benchmarks.bench_startup [--repeats 5] [--variants after before] [--profile FILE]

* ``connected``: ``slperf client --insecure`` against a running server, from ``Popen`` to the daemon's
  "connected to" log line (Python, torch, grpc and the package imported, the session opened).
* ``ready`` / ``first step``: a fresh process imports the daemon, sets up a ``vanilla`` MNIST run through the
  daemon's own ``_setup`` (config, data shard, paradigm, exchange) and runs its first training step (bottom
  forward, activations out, a gradient back, backward and the optimiser step) against an in-memory link, timed
  from the parent's ``Popen``. Variant ``after`` is the code as it is; ``before`` swaps back what the paradigms
  used before the start-up work (``torch.optim.SGD``, which imports ``torch._dynamo`` at its first use, and
  ``acts.backward(grad)``, which imports sympy); the two are interleaved repetition by repetition, so both are
  measured in the same sitting. ``--profile FILE`` writes a cProfile of one child's set-up and first step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import banner, write_result

READY = "SLPERF_READY port="


def _child(variant: str, profile: str | None) -> None:
    """Runs in the fresh process: set-up and first step, printing the wall-clock times as JSON."""
    t_main = time.time()
    import asyncio

    import torch

    from slperf.common.config_loader import config_from_mapping
    from slperf.common.protocol.messages import RunSetup
    from slperf.common.protocol.types import CutReply
    from slperf.slclient.daemon import ClientDaemon, ClientOptions

    t_import = time.time()
    if variant == "before":
        from slperf.common.devices import to_device
        from slperf.common.paradigms.kit import bottom_client

        def torch_sgd(params, config, lr=None):
            return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

        def old_backward_step(acts, grad, optimizer):
            optimizer.zero_grad(set_to_none=True)
            acts.backward(to_device(grad, acts.device))
            optimizer.step()

        bottom_client.make_optimizer = torch_sgd  # type: ignore[assignment]
        bottom_client.bottom_backward_step = old_backward_step  # type: ignore[assignment]

    config, _ = config_from_mapping(
        {"paradigm": "vanilla", "clients": 1, "epochs": 1, "max_train_samples": 640, "max_test_samples": 100}
    )
    setup = RunSetup(run_id="bench", config_json=config.to_json(), client_index=0, num_clients=1)

    class Done(Exception):
        pass

    class Link:
        run_id = "bench"

        def __init__(self) -> None:
            self.sent: list[Any] = []
            self.cut: Any = None

        async def send(self, message: Any) -> None:
            self.sent.append(message)

        async def send_cut_tensor(self, ref, tensor, labels=None, sample_ids=None) -> None:
            if self.cut is not None:
                raise Done  # the second step begins: the first one (with its optimiser step) is over
            self.cut = (ref, tensor)

        async def recv_reply(self, ref) -> CutReply:
            return CutReply(ref, torch.full_like(self.cut[1], 1e-3), 2.3, 0, int(self.cut[1].shape[0]))

    async def main() -> tuple[float, float]:
        daemon = ClientDaemon(ClientOptions(server="unused:1", client_id="c1", credentials=None))
        link = Link()
        await daemon._setup(link, setup)  # type: ignore[arg-type]
        ready = time.time()
        assert daemon.paradigm is not None, link.sent
        try:
            await daemon.paradigm.train_epoch(link, 0, {})  # type: ignore[arg-type]
        except Done:
            pass
        return ready, time.time()

    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        ready, first = asyncio.run(main())
        profiler.disable()
        profiler.dump_stats(profile)
    else:
        ready, first = asyncio.run(main())
    print(
        json.dumps(
            {
                "main": t_main,
                "imported": t_import,
                "ready": ready,
                "first_step": first,
                "dynamo_imported": "torch._dynamo" in sys.modules,
                "sympy_imported": "sympy" in sys.modules,
            }
        )
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def first_step(variant: str, profile: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_startup", "--child", variant]
    if profile:
        cmd += ["--profile", profile]
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, check=True)
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "interpreter": times["main"] - started,
        "imported": times["imported"] - started,
        "ready": times["ready"] - started,
        "first_step": times["first_step"] - started,
        "set_up": times["ready"] - times["imported"],
        "first_step_after_ready": times["first_step"] - times["ready"],
        "dynamo_imported": times["dynamo_imported"],
        "sympy_imported": times["sympy_imported"],
    }


def connect_times(repeats: int) -> list[float]:
    """Popen to "connected to" of ``slperf client`` against one running plaintext server."""
    with tempfile.TemporaryDirectory(prefix="slperf-startup-") as tmp:
        server = subprocess.Popen(
            [sys.executable, "-m", "slperf.cli", "server", "--insecure", "--address", "127.0.0.1:0", "--runs-dir", tmp],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(),
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline().strip()
            if not line.startswith(READY):
                raise RuntimeError(f"the server did not start: {line!r}")
            port = line[len(READY) :]
            times = []
            for i in range(repeats):
                started = time.time()
                client = subprocess.Popen(
                    [sys.executable, "-m", "slperf.cli", "client", "--insecure", "--server", f"127.0.0.1:{port}"]
                    + ["--id", f"bench{i}"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=_env(),
                )
                try:
                    assert client.stderr is not None
                    for log in client.stderr:  # waits on the daemon's own log line, bounded by its exit
                        if "connected to" in log:
                            times.append(time.time() - started)
                            break
                    else:
                        raise RuntimeError("the client daemon exited before it connected")
                finally:
                    client.terminate()
                    client.wait(timeout=30)
            return times
        finally:
            server.terminate()
            server.wait(timeout=30)


def help_times(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.time()
        subprocess.run([sys.executable, "-m", "slperf.cli", "client", "--help"], capture_output=True, check=True)
        times.append(time.time() - started)
    return times


def run(repeats: int, variants: list[str], profile: str | None) -> dict[str, Any]:
    banner("client daemon start-up: process start to connected, ready and first step (medians)")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved: every variant sees the same machine load
        for name in variants:
            runs[name].append(first_step(name))
    result: dict[str, Any] = {"repeats": repeats, "first_step": {}}
    for name, rows in runs.items():
        medians = {key: statistics.median(r[key] for r in rows) for key in rows[0] if not key.endswith("_imported")}
        result["first_step"][name] = {"median": medians, "runs": rows}
        print(
            f"{name:>6}: imported {medians['imported']:.2f} s, ready {medians['ready']:.2f} s, first step "
            f"{medians['first_step']:.2f} s (set-up {medians['set_up']:.2f} s, first step after ready "
            f"{medians['first_step_after_ready']:.2f} s); torch._dynamo imported: {rows[0]['dynamo_imported']}, "
            f"sympy: {rows[0]['sympy_imported']}",
            flush=True,
        )
    connected = connect_times(repeats)
    result["connected_seconds"] = {"median": statistics.median(connected), "runs": connected}
    helps = help_times(repeats)
    result["client_help_seconds"] = {"median": statistics.median(helps), "runs": helps}
    print(f"slperf client: process start to connected {statistics.median(connected):.2f} s (median of {repeats})")
    print(f"slperf client --help: {statistics.median(helps):.2f} s (median of {repeats})")
    if profile:
        first_step(variants[0], profile)
        result["profile"] = profile
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["after", "before"], choices=["after", "before"])
    parser.add_argument("--profile", help="write a cProfile of one child's set-up and first step to this file")
    parser.add_argument("--child", choices=["after", "before"], help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.profile)
        return None
    result = run(args.repeats, args.variants, args.profile)
    write_result("startup", result, args.results_dir)
    return result


if __name__ == "__main__":
    main()
