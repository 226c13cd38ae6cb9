"""Device resolution, the host/device crossing and the run's precision and determinism keys, on the CPU: a device
the machine lacks is one clear error, the CPU path copies nothing, and amp / deterministic change what runs."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slperf.common.config import ConfigError, RunConfig
from slperf.common.config_loader import config_from_mapping
from slperf.common.devices import (
    Amp,
    Placement,
    apply_determinism,
    cut_to_host,
    host_copy,
    host_state,
    party_placement,
    resolve_device,
    to_device,
    to_host,
)
from slperf.common.paradigms.kit.aggregate import fedavg
from slperf.common.paradigms.kit.steps import bottom_backward_step, make_optimizer, top_train_step
from slperf.slserver.compute import ComputeContext

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _determinism_restored():
    """torch's deterministic flag is process-wide; no test may leave it on for the next."""
    yield
    torch.use_deterministic_algorithms(False)


class CopyRecorder(TorchFunctionMode):
    """Records every torch call that could copy a tensor (``to``, ``clone``, ``contiguous``, ``copy_``, ...)."""

    WATCH = {"to", "clone", "contiguous", "copy_", "pin_memory", "cpu", "cuda", "float", "detach_copy"}

    def __init__(self):
        super().__init__()
        self.copies: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in self.WATCH:
            self.copies.append(name)
        return func(*args, **(kwargs or {}))


def _config(**keys) -> RunConfig:
    config, _ = config_from_mapping(keys)
    return config


# -- resolution and config checks ----------------------------------------------------------------------------
@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_a_device_this_machine_lacks_is_one_error_naming_the_fix(name):
    with pytest.raises(ConfigError) as err:
        resolve_device(name, where="the server")
    message = str(err.value)
    assert f"device '{name}' is not available on the server" in message
    assert "device: cpu" in message and "CUDA build of PyTorch" in message


@no_cuda
def test_a_server_paradigm_refuses_a_missing_device_when_it_is_built():
    with pytest.raises(ConfigError, match="not available on the server"):
        ComputeContext(_config(device="cuda"), "r", concurrent.futures.ThreadPoolExecutor(1))


def test_the_config_checks_spelling_but_not_this_machine():
    # A GPU server's config is checked on CPU machines too (the operator's laptop, CPU clients): spelling only.
    assert _config(device="cuda:1", client_device="cuda").device == "cuda:1"
    for key, value in (("device", "gpu0"), ("client_device", "gpu")):
        with pytest.raises(ConfigError, match=f"config key '{key}' must be 'cpu', 'cuda' or 'cuda:N'"):
            _config(**{key: value})
    # SLPerf's shipped config.yaml says `device: gpu`, which SLPerf's own code ignores: ignored with a warning.
    assert _config(device="gpu").device == "cpu"


def test_amp_accepts_none_and_bf16_and_refuses_fp16_saying_why():
    assert _config(amp="bf16").amp == "bf16"
    with pytest.raises(ConfigError, match="fp16 is not supported: it needs loss scaling.*use amp: bf16"):
        _config(amp="fp16")
    with pytest.raises(ConfigError, match="config key 'amp' must be one of none, bf16"):
        _config(amp="half")


def test_cpu_resolves_and_a_bad_spelling_is_refused():
    assert resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match="'--device' must be"):
        resolve_device("tpu", key="--device")


# -- the crossing: nothing copied on the CPU -----------------------------------------------------------------
def test_cpu_tensors_cross_as_themselves():
    t = torch.randn(4, 3)
    assert to_device(t, CPU) is t
    assert to_host(t) is t
    assert cut_to_host(t) is t
    assert cut_to_host(t.to(torch.bfloat16)).dtype == torch.float32  # amp output crosses as the exchange's dtype


def test_a_cpu_module_state_goes_out_without_a_copy_and_a_kept_copy_is_independent():
    layer = nn.Linear(3, 2)
    sent = host_state(layer)
    assert sent["weight"].data_ptr() == layer.weight.data_ptr()  # as state_dict() was before devices
    kept = host_copy(layer)
    assert kept["weight"].data_ptr() != layer.weight.data_ptr()
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert not torch.equal(kept["weight"], layer.weight)


def test_a_cpu_training_step_makes_no_extra_copy():
    torch.manual_seed(0)
    top = nn.Sequential(nn.Linear(6, 4))
    optimizer = make_optimizer(top.parameters(), RunConfig())
    acts, labels = torch.randn(5, 6), torch.randint(0, 4, (5,))
    bottom = nn.Linear(3, 6)
    bottom_opt = make_optimizer(bottom.parameters(), RunConfig())
    x = torch.randn(5, 3)
    # Warm up: SGD clones each gradient into its momentum buffer at its first step (torch's own, once).
    bottom_backward_step(bottom(x), top_train_step(top, optimizer, acts, labels).grad, bottom_opt)
    with CopyRecorder() as recorder:
        out = top_train_step(top, optimizer, acts, labels)
        sent = cut_to_host(out.grad)
        up = bottom(to_device(x, CPU))
        bottom_backward_step(up, sent, bottom_opt)
    assert recorder.copies == [], recorder.copies
    assert sent is out.grad


# -- FedAvg ---------------------------------------------------------------------------------------------------
def test_fedavg_accumulates_in_float64_on_the_host():
    a = {"w": torch.tensor([1.0, 1e-8], dtype=torch.float32), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 3e-8], dtype=torch.float32), "n": torch.tensor(4)}
    out = fedavg([(a, 1.0), (b, 3.0)])
    expected = (a["w"].double() * 0.25 + b["w"].double() * 0.75).float()
    assert torch.equal(out["w"], expected) and out["w"].device == CPU
    assert out["n"].item() == 4 and out["n"].dtype == torch.int64


# -- amp --------------------------------------------------------------------------------------------------------
def _server_step(amp: str) -> tuple[torch.dtype, torch.Tensor, list[torch.dtype]]:
    """One server step through the real ComputeContext; the dtype the top's Linear computed in is recorded."""
    torch.manual_seed(1)
    top = nn.Sequential(nn.Linear(8, 4))
    seen: list[torch.dtype] = []
    top[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    optimizer = make_optimizer(top.parameters(), RunConfig())
    acts, labels = torch.randn(6, 8), torch.randint(0, 4, (6,))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        ctx = ComputeContext(_config(amp=amp), "r", pool)
        out = asyncio.run(ctx.compute(top_train_step, top, optimizer, acts, labels))
    return out.grad.dtype, out.grad, seen


def test_amp_bf16_computes_the_forward_in_bf16_and_still_sends_float32():
    dtype_none, grad_none, seen_none = _server_step("none")
    dtype_bf16, grad_bf16, seen_bf16 = _server_step("bf16")
    assert seen_none == [torch.float32] and seen_bf16 == [torch.bfloat16]
    assert dtype_none == dtype_bf16 == torch.float32  # the wire's dtype either way
    assert not torch.equal(grad_none, grad_bf16)
    torch.testing.assert_close(grad_bf16, grad_none, rtol=0.05, atol=0.01)


def test_the_autocast_of_a_placement_is_off_for_none_and_on_for_bf16():
    layer = nn.Linear(2, 2)
    with Placement(CPU).autocast():
        assert layer(torch.randn(1, 2)).dtype == torch.float32
    with Placement(CPU, Amp.BF16).autocast():
        assert layer(torch.randn(1, 2)).dtype == torch.bfloat16


# -- deterministic -------------------------------------------------------------------------------------------
def test_deterministic_turns_torch_deterministic_mode_on_for_the_party_and_off_again():
    party_placement(_config(deterministic=True))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.isnan(torch.empty(4)).all()  # deterministic mode fills fresh memory: the key changes behaviour
    party_placement(_config())  # the next run of the same process without the key
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_on_cuda_without_the_cublas_variable_names_it(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8"):
        apply_determinism(True, torch.device("cuda", 0))  # checked before anything touches the GPU
    assert not torch.are_deterministic_algorithms_enabled()
