"""Where a party computes: its torch device, how tensors cross between that device and the host bytes of the
wire, mixed precision and deterministic algorithms. One module, so that every party (the server's compute
thread, each client daemon) places its work the same way.

The wire only ever sees host (CPU) tensors. On a CPU party every helper here returns the tensor it was given
(no ``.to()``, ``.contiguous()`` or ``.clone()`` on the hot path); on a CUDA party a tensor leaving the device is
copied into pinned host memory with a non-blocking copy, and the copying stream is synchronised before the
tensor is handed back, so the bytes the codec reads are complete. Tensors arriving from the wire go to the
device with ``non_blocking=True`` (a pageable source makes that a staged, safe copy).
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from slperf.common.config import ConfigError, RunConfig, check_amp_name, check_device_name

M = TypeVar("M", bound=nn.Module)

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"


class Amp(enum.Enum):
    """Mixed precision for a party's forward compute (``amp:`` in the run config)."""

    NONE = "none"
    BF16 = "bf16"


AMP_DTYPES: Mapping[Amp, torch.dtype] = {Amp.BF16: torch.bfloat16}


def check_amp(value: str) -> Amp:
    check_amp_name(value)
    return Amp(value)


def resolve_device(
    name: str, *, key: str = "device", where: str = "this machine", fix: str | None = None
) -> torch.device:
    """The torch device ``name`` stands for on this machine; ConfigError naming the fix when it has none.

    Called when a party sets itself up (the server at run start, a client daemon at start-up or at run set-up),
    so a missing GPU is one clear error there instead of a crash in the middle of a run.
    """
    check_device_name(key, name)
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = (
            f"this PyTorch ({torch.__version__}) is a CPU-only build"
            if torch.version.cuda is None
            else f"PyTorch (CUDA {torch.version.cuda}) sees no CUDA device"
        )
        fix = fix or f"Set {key}: cpu in the run config"
        raise ConfigError(
            f"{key} '{name}' is not available on {where}: {build}. {fix}, or run it on a machine with an NVIDIA GPU "
            "and a CUDA build of PyTorch (check: python -c 'import torch; print(torch.cuda.is_available())')"
        )
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{key} '{name}' is not available on {where}: it has {count} CUDA device(s), 0..{count - 1}")
    return torch.device("cuda", index)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: itself when it is there already (the CPU path never copies)."""
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=True)


def _sync(device: torch.device) -> None:
    """Waits for the copies queued on ``device``'s current stream (where ``copy_`` queues them)."""
    torch.cuda.current_stream(device).synchronize()


def _pinned_copy(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    out = torch.empty(tensor.shape, dtype=dtype or tensor.dtype, pin_memory=True)
    out.copy_(tensor.detach(), non_blocking=True)
    return out


def to_host(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` as a host tensor ready for the wire (of ``dtype`` if given). A CPU tensor of that dtype is
    returned as it is; a device tensor is copied into pinned memory and the copy is complete on return."""
    if tensor.device.type == "cpu":
        return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
    out = _pinned_copy(tensor, dtype)
    _sync(tensor.device)
    return out


def cut_to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A cut tensor (activations, a gradient) for the wire: on the host and float32, which every exchange
    declares, whatever precision the party computed it in (bf16 under ``amp``)."""
    return to_host(tensor, torch.float32 if tensor.is_floating_point() else None)


def _state_to_host(module: nn.Module, *, copy: bool) -> dict[str, torch.Tensor]:
    """The module's state on the host: device entries as pinned copies (all queued, then one synchronisation per
    device), host entries as they are or, with ``copy``, cloned."""
    state = module.state_dict()
    devices = {t.device for t in state.values() if t.device.type != "cpu"}
    out = {
        k: _pinned_copy(v, None) if v.device.type != "cpu" else (v.detach().clone() if copy else v)
        for k, v in state.items()
    }
    for device in devices:
        _sync(device)
    return out


def host_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state for the wire: on a CPU module its ``state_dict()`` tensors themselves (no copy, as
    before devices existed); on a device, pinned host copies."""
    return _state_to_host(module, copy=False)


def host_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A host copy of the module's state that later training does not change (kept states, averages): clones of
    host tensors, pinned copies (fresh memory already) of device tensors."""
    return _state_to_host(module, copy=True)


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes (its first parameter or buffer; CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def apply_determinism(enabled: bool, device: torch.device) -> None:
    """``deterministic:`` for this process (torch's flag is global; a party runs one run at a time, so each run
    sets it either way). On CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` in the environment before it first
    runs, which a running process cannot arrange for itself: that is a set-up error naming the variable."""
    if enabled and device.type == "cuda" and os.environ.get(CUBLAS_ENV) not in (":4096:8", ":16:8"):
        raise ConfigError(
            f"deterministic: true on {device} needs {CUBLAS_ENV}={CUBLAS_DETERMINISTIC} (or :16:8) in the "
            f"environment of this process before it starts, e.g. `{CUBLAS_ENV}={CUBLAS_DETERMINISTIC} slperf server "
            "...`; the local federation sets it for its processes"
        )
    if torch.are_deterministic_algorithms_enabled() != enabled:
        # Only on a change: torch.use_deterministic_algorithms imports torch._inductor (and with it torch._dynamo,
        # seconds of CPU), which a run without the key must not pay.
        torch.use_deterministic_algorithms(enabled)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark


@dataclass(frozen=True)
class Placement:
    """One party's device and precision: where its segments live and its batches are computed."""

    device: torch.device
    amp: Amp = Amp.NONE

    def module(self, module: M) -> M:
        """Moves ``module`` (parameters and buffers) to the party's device, before any optimiser is built on it
        so that the optimiser's state lives there too."""
        return module.to(self.device)

    def inbound(self, tensor: torch.Tensor) -> torch.Tensor:
        return to_device(tensor, self.device)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward compute's precision (thread-local: entered on the thread that computes)."""
        if self.amp is Amp.NONE:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.amp]):
            yield


def party_placement(
    config: RunConfig, *, where: str = "this machine", key: str = "device", fix: str | None = None
) -> Placement:
    """Sets up this party's compute for a run: resolves ``config.device`` (ConfigError when the machine lacks
    it), applies ``deterministic`` and returns the placement. A client daemon passes the run's config with
    ``device`` set to its own device (its ``--device``, else the run's ``client_device``)."""
    device = resolve_device(config.device, key=key, where=where, fix=fix)
    apply_determinism(config.deterministic, device)
    return Placement(device, check_amp(config.amp))
