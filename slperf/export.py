"""``slperf export``: a finished run's model out of where the run left it.

* The server's part (operator, on the server): ``final.safetensors`` and ``serving.json`` from the run folder,
  with the run's ``config.yaml``, copied to ``--out``.
* A party's part (on its machine): its ``final.safetensors`` and ``final.json`` from its daemon's state
  directory.
* ``--assemble`` (a local research run, where the server's run folder and the clients' state directories are
  on one machine): the whole unsplit model, as ``model.safetensors`` (keys of the one ``nn.Sequential``, which
  ``build_model`` of the same model name, shape, classes and seed loads), as TorchScript (``model.pt``,
  ``torch.jit.trace``; ``torch.jit.load`` runs it without slperf) and ``model.json`` (what it takes: shape,
  normalisation, classes). Which client's bottom (head and tail): ``--client``; by default the run's first
  participant that kept its segments. For paradigms whose clients share one bottom (vanilla hands it on,
  SplitFed averages it, sequential U-shaped hands on head and tail) every client holds the same one; PSL, SGLR
  and parallel U-shaped keep one per client, and the assembled model is that client's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from slperf.common.data.registry import DATASETS
from slperf.common.fsutil import atomic_write
from slperf.common.paradigms.kit.inference import ModelFacts, assemble, build_segment
from slperf.slclient.state_store import FINAL_LAYOUT, FINAL_WEIGHTS, StateStore
from slperf.slserver.served_models import SERVING, WEIGHTS


class ExportError(Exception):
    """The run's model cannot be exported as asked; the message says why."""


@dataclass
class Assembled:
    model: torch.nn.Sequential
    client_id: str
    facts: ModelFacts
    dataset: str


def _serving(run_folder: Path) -> dict[str, Any]:
    try:
        serving = json.loads((run_folder / SERVING).read_text())
    except FileNotFoundError:
        raise ExportError(
            f"{run_folder} has no {SERVING}: the run did not finish, is not in this folder, or its model was removed"
        ) from None
    if not serving.get("supported"):
        raise ExportError(f"run {run_folder.name}: {serving.get('reason', 'no served model')}")
    return dict(serving)


def export_server(run_folder: Path, out: Path) -> list[Path]:
    _serving(run_folder)
    out.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(run_folder / name, out / name)) for name in (WEIGHTS, SERVING, "config.yaml")]


def export_client(store: StateStore, run_id: str, out: Path) -> list[Path]:
    folder = store.folder(run_id)
    if not (folder / FINAL_LAYOUT).exists():
        raise ExportError(f"client {store.client_id} kept no final segments of run {run_id} under {store.root}")
    out.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(folder / name, out / name)) for name in (FINAL_WEIGHTS, FINAL_LAYOUT)]


def assemble_run(run_folder: Path, state_dir: Path, client_id: str | None = None) -> Assembled:
    """The unsplit model of the run in ``run_folder`` from the server's segment and one client's (see the
    module docstring for which)."""
    serving = _serving(run_folder)
    run_id = run_folder.name
    candidates = [client_id] if client_id else list(serving["participants"])
    if client_id and client_id not in serving["participants"]:
        raise ExportError(
            f"client {client_id} did not take part in run {run_id} ({', '.join(serving['participants'])})"
        )
    for cid in candidates:
        store = StateStore(state_dir, cid)
        try:
            layout, segments = store.load_final(run_id)
        except FileNotFoundError:
            continue
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        break
    else:
        raise ExportError(f"no final segments of run {run_id} for {', '.join(candidates)} under {state_dir}")
    facts = ModelFacts(serving["model"], tuple(serving["model_input_shape"]), serving["num_classes"], serving["seed"])
    prefix = f"{serving['segment']}/"
    server_state = {k[len(prefix) :]: v for k, v in load_file(run_folder / WEIGHTS).items() if k.startswith(prefix)}
    parts = [
        ((serving["blocks"][0], serving["blocks"][1]), build_segment(facts, tuple(serving["blocks"]), server_state))
    ]
    for name, span in layout["segments"].items():
        blocks = (int(span[0]), int(span[1]))
        parts.append((blocks, build_segment(facts, blocks, segments[name])))
    try:
        model = assemble(parts)
    except ValueError as exc:
        raise ExportError(f"run {run_id}: {exc}") from None
    return Assembled(model, cid, facts, serving["dataset"])


def write_assembled(assembled: Assembled, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in assembled.model.state_dict().items()}
    atomic_write(out / "model.safetensors", save(state))
    spec = DATASETS[assembled.dataset]
    example = torch.zeros(1, *assembled.facts.input_shape)
    with torch.no_grad():
        traced = torch.jit.trace(assembled.model, example)
    atomic_write(out / "model.pt", lambda handle: torch.jit.save(traced, handle))
    facts = {
        "model": assembled.facts.model,
        "input_shape": list(assembled.facts.input_shape),
        "num_classes": assembled.facts.num_classes,
        "seed": assembled.facts.seed,
        "dataset": assembled.dataset,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "client_segments_from": assembled.client_id,
    }
    atomic_write(out / "model.json", json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return [out / "model.safetensors", out / "model.pt", out / "model.json"]
