"""The model a finished run leaves on the server for split inference, and the server's cache of them.

At the end of a run the coordinator asks the paradigm for its ``InferencePlan`` and keeps, in the run folder:

``final.safetensors``  the server's own segment (``top``, or U-shaped's ``middle``), tensors named
                       ``<segment>/<parameter>``, no pickle;
``serving.json``       what serves it: the run's participants (the only clients that may query it), the segment's
                       name and block range in the unsplit model, the facts that build the model again, the shape
                       of one sample at its input, or ``supported: false`` with the reason.

It sends every client the segments the plan gives it (before the run's Finish), which each client daemon keeps
under its state directory (``slperf.slclient.state_store``). The files stay until the operator removes them
(``slperf remove-model RUN_ID``, the Control service's ``RemoveModel``); the run's config, metrics and summary
stay in any case. Loading a model is disk and torch work: the service does it on the server's compute thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from slperf.common.config import RunConfig
from slperf.common.data.registry import DATASETS
from slperf.common.fsutil import atomic_write
from slperf.common.paradigms.base import ClientHandle, InferenceUnsupported, ServerParadigm
from slperf.common.paradigms.kit.inference import ModelFacts, build_segment, segment_blocks
from slperf.common.protocol.types import RunState, State
from slperf.common.security.ids import valid_run_id

log = logging.getLogger("slperf.server.run")

FORMAT = "slperf-serving/1"
WEIGHTS = "final.safetensors"
SERVING = "serving.json"
MAX_BATCH = 1024  # samples per Predict request; the reply says so, a bigger batch is INVALID_ARGUMENT


class ModelUnavailable(Exception):
    """No model of that run can be served; ``code`` is the gRPC status name that says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ServedModel:
    """A finished run's server segment, ready to run (eval mode, CPU, float32)."""

    run_id: str
    kind: str  # "top" or "middle"
    participants: frozenset[str]
    input_shape: tuple[int, ...]  # one sample at the segment's input (the cut)
    segment: nn.Module
    max_batch: int = MAX_BATCH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = self.segment(x)
        return out.contiguous()


def write_serving(
    folder: Path,
    run_id: str,
    config: RunConfig,
    participants: Sequence[str],
    plan_server: dict[str, State] | None,
    why: str = "",
) -> None:
    """``serving.json`` (and, with a segment, ``final.safetensors``) in the run folder; see the module docstring.
    ``plan_server`` is ``{segment name: state}`` with exactly one segment, or None when ``why`` says why not."""
    record: dict[str, Any] = {"format": FORMAT, "run_id": run_id, "participants": list(participants)}
    if plan_server is None:
        record.update(supported=False, reason=why)
        atomic_write(folder / SERVING, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return
    dataset = DATASETS[config.dataset]
    facts = ModelFacts(config.model, tuple(dataset.input_shape), dataset.num_classes, config.seed)
    ((name, state),) = plan_server.items()
    blocks = segment_blocks(config, facts.input_shape, facts.num_classes, [name])[name]
    with torch.no_grad():
        x = torch.zeros(1, *facts.input_shape)
        children = list(facts.build().eval().children())
        for block in children[: blocks[0]]:
            x = block(x)
    tensors = {f"{name}/{key}": t.detach().to("cpu").contiguous() for key, t in state.items()}
    atomic_write(folder / WEIGHTS, save(tensors, metadata={"format": FORMAT, "run_id": run_id}))
    record.update(
        supported=True,
        kind="top" if name == "top" else "middle",
        segment=name,
        blocks=list(blocks),
        model=facts.model,
        model_input_shape=list(facts.input_shape),
        num_classes=facts.num_classes,
        seed=facts.seed,
        input_shape=list(x.shape[1:]),
        dataset=config.dataset,
    )
    atomic_write(folder / SERVING, json.dumps(record, indent=2, sort_keys=True) + "\n")


async def keep_for_inference(
    folder: Path,
    run_id: str,
    config: RunConfig,
    paradigm: ServerParadigm,
    clients: Sequence[ClientHandle],
    compute: Any,
) -> None:
    """At the end of a finished run: every client is sent the segments it keeps, and the server's own segment is
    written to the run folder (``compute`` is the run's ``ComputeContext.compute``). A client that is gone by then
    keeps no final segments (logged); a paradigm without split inference leaves ``serving.json`` saying why."""
    ids = [c.client_id for c in clients]
    try:
        plan = paradigm.inference_plan(clients)
    except InferenceUnsupported as exc:
        await compute(write_serving, folder, run_id, config, ids, None, str(exc))
        return
    last = config.epochs - 1
    for client in clients:
        try:
            for segment, state in sorted(plan.clients.get(client.client_id, {}).items()):
                await client.set_weights(segment, state, last)
        except Exception as exc:  # noqa: BLE001 - a client gone now costs it its final segments, not the run
            log.warning("run %s: client %s did not get its final segments: %s", run_id, client.client_id, exc)
    await compute(write_serving, folder, run_id, config, ids, plan.server)


class ServedModels:
    """The finished runs' models this server serves, loaded on first use and kept until removed."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)
        self._cache: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    def _folder(self, run_id: str) -> Path:
        if not valid_run_id(run_id):
            raise ModelUnavailable("INVALID_ARGUMENT", f"invalid run id {run_id!r}")
        return self.runs_dir / run_id

    def load(self, run_id: str, running: str | None = None) -> ServedModel:
        """The served model of ``run_id`` (blocking: call it on the compute thread). ``running`` names the run the
        server is in now, if any, so that it is refused as unfinished rather than unknown."""
        with self._lock:
            cached = self._cache.get(run_id)
        if cached is not None:
            return cached
        folder = self._folder(run_id)
        if not (folder / "config.yaml").is_file():
            raise ModelUnavailable("NOT_FOUND", f"no run {run_id!r} on this server")
        state = _read_json(folder / "state.json")
        if run_id == running or state is None or state.get("state") != RunState.FINISHED:
            what = "still in progress" if state is None else str(state.get("state"))
            raise ModelUnavailable("FAILED_PRECONDITION", f"run {run_id} is {what}: only finished runs serve inference")
        serving = _read_json(folder / SERVING)
        if serving is None:
            raise ModelUnavailable("NOT_FOUND", f"run {run_id} has no served model (removed by the operator)")
        if not serving.get("supported"):
            raise ModelUnavailable("FAILED_PRECONDITION", f"run {run_id}: {serving.get('reason', 'not supported')}")
        try:
            facts = ModelFacts(
                serving["model"], tuple(serving["model_input_shape"]), serving["num_classes"], serving["seed"]
            )
            name = serving["segment"]
            prefix = f"{name}/"
            tensors = load_file(folder / WEIGHTS)
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            segment = build_segment(facts, (serving["blocks"][0], serving["blocks"][1]), state)
        except (KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
            raise ModelUnavailable("DATA_LOSS", f"run {run_id}: its served model cannot be read: {exc}") from None
        model = ServedModel(
            run_id, serving["kind"], frozenset(serving["participants"]), tuple(serving["input_shape"]), segment
        )
        with self._lock:
            self._cache[run_id] = model
        return model

    def remove(self, run_id: str) -> bool:
        """Forgets the run's served model and deletes its files; False when it had none."""
        folder = self._folder(run_id)
        with self._lock:
            self._cache.pop(run_id, None)
        removed = False
        for name in (SERVING, WEIGHTS):
            try:
                (folder / name).unlink()
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            log.info("run %s: served model removed by the operator", run_id)
        return removed


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
