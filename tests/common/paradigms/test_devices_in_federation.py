"""The run's device, precision and determinism keys through a whole federation (the in-process harness: real
server half, client daemons, serde and framing). On the CPU: amp=bf16 changes the training but not a byte on the
wire, and deterministic runs repeat bit for bit. On CUDA (marked ``cuda``, skipped without a GPU): a federation
with the server and the clients on the GPU, and a mixed one, end where the CPU federation ends, within tolerance."""

from __future__ import annotations

import pytest
import torch
from sl_wire_harness import config_from, run_in_process

BASE = {
    "dataset": "mnist",
    "clients": 2,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 128,
    "max_test_samples": 64,
    "eval_batch_size": 32,
    "seed": 4,
    "client_timeout": 30.0,
}
PARADIGMS = ["splitfed_v1", "ushaped"]


@pytest.fixture(autouse=True)
def _determinism_restored():
    yield
    torch.use_deterministic_algorithms(False)


def _run(paradigm: str, **keys):
    fed = run_in_process(config_from(BASE, paradigm=paradigm, **keys))
    bytes_ = {cid: fed.bytes(cid) for cid in fed.ids}
    return fed.server.model_state(), fed.results[-1][1], bytes_


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[s][k].double() - b[s][k].double()).abs().max()) for s in a for k in a[s])


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_amp_bf16_changes_the_training_not_the_wire(paradigm):
    plain, plain_eval, plain_bytes = _run(paradigm)
    mixed, mixed_eval, mixed_bytes = _run(paradigm, amp="bf16")
    assert mixed_bytes == plain_bytes  # cut tensors cross as float32 either way
    assert 0 < _max_diff(plain, mixed) < 0.05  # bf16 forward compute: different, close
    assert abs(mixed_eval.accuracy - plain_eval.accuracy) <= 0.1


def test_deterministic_is_applied_by_the_parties_and_the_run_repeats_bit_for_bit():
    first, _, _ = _run("splitfed_v1", deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    again, _, _ = _run("splitfed_v1", deterministic=True)
    assert _max_diff(first, again) == 0.0


# -- on a GPU ----------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("paradigm", PARADIGMS)
@pytest.mark.parametrize(
    "server,clients", [("cuda", "cuda"), ("cuda", "cpu"), ("cpu", "cuda")], ids=["all-gpu", "gpu-server", "gpu-clients"]
)
def test_a_federation_on_cuda_ends_where_the_cpu_one_ends(paradigm, server, clients):
    cpu, cpu_eval, cpu_bytes = _run(paradigm)
    gpu, gpu_eval, gpu_bytes = _run(paradigm, device=server, client_device=clients)
    assert gpu_bytes == cpu_bytes
    assert all(t.device.type == "cpu" for state in gpu.values() for t in state.values())  # host states
    assert _max_diff(cpu, gpu) < 1e-3
    assert abs(gpu_eval.accuracy - cpu_eval.accuracy) <= 0.05


@pytest.mark.cuda
def test_amp_bf16_on_cuda_runs_and_stays_close():
    cpu, _, cpu_bytes = _run("splitfed_v1")
    gpu, _, gpu_bytes = _run("splitfed_v1", device="cuda", client_device="cuda", amp="bf16")
    assert gpu_bytes == cpu_bytes and _max_diff(cpu, gpu) < 0.05


@pytest.mark.cuda
def test_deterministic_on_cuda_repeats_bit_for_bit(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    first, _, _ = _run("splitfed_v1", device="cuda", client_device="cuda", deterministic=True)
    again, _, _ = _run("splitfed_v1", device="cuda", client_device="cuda", deterministic=True)
    assert _max_diff(first, again) == 0.0


@pytest.mark.cuda
def test_cuda_tensors_cross_through_pinned_host_memory():
    from slperf.common.devices import cut_to_host, host_state, to_device

    t = torch.randn(64, 32, device="cuda")
    host = cut_to_host(t)
    assert host.device.type == "cpu" and host.is_pinned() and torch.equal(host, t.cpu())
    state = host_state(torch.nn.Linear(4, 4).cuda())
    assert all(v.device.type == "cpu" and v.is_pinned() for v in state.values())
    back = to_device(host, torch.device("cuda", torch.cuda.current_device()))
    assert torch.equal(back, t)
