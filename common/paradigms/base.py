"""The plug-in interface every paradigm implements, and the in-memory messages it works with.

A paradigm is a pair of strategy objects: a ``ServerParadigm`` that decides who trains when, what crosses
the wire per batch and what is aggregated, and a ``ClientParadigm`` that runs inside each client daemon.
They see client handles, links and tensors, never gRPC: the daemons in ``slserver``/``slclient`` provide
those, so a new paradigm is one module in this package and needs no change to the server or client core.
A paradigm module imports this API, the registry and what paradigms share (the ``kit`` subpackage), never
another paradigm.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from slperf.common.config import RunConfig, compress_codecs
from slperf.common.data.client_data import ClientData as ClientData  # part of the paradigm API
from slperf.common.devices import Placement, party_placement
from slperf.common.paradigms.threats import UNDECLARED, ThreatModel
from slperf.common.protocol.exchange import Exchange, with_compression
from slperf.common.protocol.types import CutReply, CutTensor, PhaseSummary, State, StepRef

T = TypeVar("T")


@dataclass(frozen=True)
class Disagreement:
    """A figure a client reported that the server would not take as given: what it claimed, what was used."""

    client: str
    round: int
    figure: str
    claimed: float | int | str
    counted: float | int

    def as_record(self) -> dict[str, object]:
        return {"client": self.client, "figure": self.figure, "claimed": self.claimed, "counted": self.counted}


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    samples: int
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. per-client / per-task figures
    # Who computed the figures: "server" (it scored the test set itself) or "clients" (only they could: the
    # figures are their report, bounded and cross-checked by the server, and marked so in the results).
    source: str = "server"
    disagreements: list[Disagreement] = field(default_factory=list)  # client reports the server did not take
    # Clients the evaluation skipped for what they sent (a poisoned test batch, figures past the bounds), by id,
    # with the reason: recorded with the round's ``misbehaved`` (the run is degraded).
    misbehaved: dict[str, str] = field(default_factory=dict)


@dataclass
class RoundResult:
    """What a round did: who took part, who dropped out, and per-client training figures."""

    participants: list[str]
    dropped: list[str] = field(default_factory=list)
    per_client: dict[str, PhaseSummary] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Clients dropped from the round for what they sent (poisoned compute, more steps than their shard), by id,
    # with the reason; they are in ``dropped`` too. A round with any marks the run degraded.
    misbehaved: dict[str, str] = field(default_factory=dict)

    @property
    def train_loss(self) -> float:
        steps = sum(s.steps for s in self.per_client.values())
        return sum(s.loss_sum for s in self.per_client.values()) / steps if steps else 0.0

    @property
    def train_accuracy(self) -> float:
        samples = sum(s.samples for s in self.per_client.values())
        return sum(s.correct for s in self.per_client.values()) / samples if samples else 0.0


class ClientGone(Exception):
    """A client's session ended or timed out while the paradigm was waiting for it."""

    def __init__(self, client_id: str, reason: str):
        super().__init__(f"client {client_id} dropped out: {reason}")
        self.client_id = client_id
        self.reason = reason


class ClientMisbehaved(ClientGone):
    """A client was dropped from the round for what it sent, not for leaving: its cut tensors made the server's
    own compute non-finite, its figures broke the bounds the server observed, or its pass ran past its shard.
    Raised where a ``ClientGone`` is (the round goes on without the client), and recorded as misbehaviour."""


class NoClientLeft(ClientGone):
    """Every client the paradigm could have used dropped out, so the step (an evaluation, a round) cannot be
    done at all. A ``ClientGone`` so that the run fails the way it does when its only client leaves."""

    def __init__(self, task: str):
        Exception.__init__(self, f"no client left to {task}")
        self.client_id = ""
        self.reason = f"no client left to {task}"


class ClientHandle(Protocol):
    """The server paradigm's view of one client daemon taking part in the run."""

    client_id: str
    index: int
    train_samples: int

    async def set_weights(self, segment: str, state: Mapping[str, torch.Tensor], round: int) -> None: ...

    async def get_weights(
        self, segment: str, round: int, expected: Mapping[str, torch.Tensor]
    ) -> tuple[State, int]: ...

    def train(self, round: int, options: Mapping[str, Any] | None = None) -> PhaseStream:
        """Starts the client's training pass; its cut tensors come in the order the paradigm's exchange declares
        (each already checked against it)."""
        ...

    def evaluate(self, round: int) -> PhaseStream: ...

    async def reply(self, reply: CutReply) -> None: ...

    async def abort(self, reason: str) -> None:
        """Ends the client's current pass early (the server stopped using it); the client goes back to
        waiting for instructions without reporting an error."""
        ...


class PhaseStream(Protocol):
    """Cut tensors of one train/eval pass, in step (and stage) order; ``summary`` is set once the client says it
    is done."""

    summary: PhaseSummary | None

    def __aiter__(self) -> AsyncIterator[CutTensor]: ...


class FedServerLink(Protocol):
    """The main server's line to the run's fed server (``fed_server:``): it says who takes part in a round and, after
    it, who trained on how many samples; the clients' segments go to the fed server, never through this server."""

    async def open_round(self, round: int, segment: str, participants: Sequence[str], layout: State) -> None: ...

    async def settle_round(self, round: int, segment: str, samples: Mapping[str, int]) -> list[str]:
        """Ends the round there; the ids of the clients whose segments were averaged (empty: no average)."""
        ...


class ServerContext(Protocol):
    config: RunConfig
    run_id: str
    # The run's fed server, or None when the server averages itself (no ``fed_server:``).
    fed_server: FedServerLink | None

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs model compute off the event loop (the server's loop must keep serving every session)."""
        ...


class ClientLink(Protocol):
    """The client paradigm's connection to the server during one pass."""

    run_id: str

    async def send_cut_tensor(
        self,
        ref: StepRef,
        tensor: torch.Tensor,
        labels: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> None: ...

    async def recv_reply(self, ref: StepRef) -> CutReply:
        """The server's reply to the cut tensor sent for ``ref``, checked against the paradigm's exchange (shape,
        dtype, batch size) before it is returned."""
        ...


class InferenceUnsupported(Exception):
    """The run's paradigm leaves no model that split inference can serve; the message says why."""


@dataclass
class InferencePlan:
    """What a finished run keeps for split inference: the server's own segment (``top``, or U-shaped's
    ``middle``) and, by client id, the segments each client keeps (``bottom``, or ``head`` and ``tail``): the
    ones the run's final evaluation used for that client. The coordinator sends every client its segments before
    it says the run is over, so a client that trained a bottom of its own which the run then replaced (SplitFed
    averages them) keeps the one that matches the server's top."""

    server: dict[str, State]
    clients: dict[str, dict[str, State]]


class ServerParadigm(abc.ABC):
    """Server half of a paradigm. One instance per run."""

    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        self.config = config
        self.ctx = ctx
        self.num_classes = num_classes
        self.input_shape = input_shape
        # The server's device (``device:``; a ConfigError naming the fix when this machine lacks it) and precision:
        # segments and optimisers are built on it, cut tensors cross to and from it (see ``slperf.common.devices``).
        self.placement: Placement = party_placement(config, where="the server")

    @abc.abstractmethod
    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        """Runs one round (every client passes once over its shard) and any aggregation after it."""

    @abc.abstractmethod
    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        """Evaluates the current global model on the test set, through whichever client(s) hold it."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after a restart (segments, optimisers, paradigm state)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def model_state(self) -> dict[str, State]:
        """Segments of the global model the server holds (for checkpoints and the equivalence tests)."""
        return {}

    def inference_plan(self, clients: Sequence[ClientHandle]) -> InferencePlan:
        """The segments the finished run keeps for split inference (see ``InferencePlan``); a paradigm whose model
        cannot be served that way keeps the default, which raises ``InferenceUnsupported`` saying so."""
        raise InferenceUnsupported(
            f"paradigm {self.config.paradigm} does not support split inference: its model is not one segment on "
            "the server between segments on one client"
        )

    def describe(self) -> dict[str, Any]:
        """Facts about this run's split for the run summary (what crosses the cut per sample); the paradigm
        knows its own model, so the coordinator never has to build one to find out."""
        return {}


@dataclass
class TrainingState:
    """What a client paradigm needs to go on training exactly where it was: its segments' weights and its
    optimisers' state as tensors by flat name, and the optimisers' hyper-state (param groups, non-tensor
    per-parameter values) as JSON-able ``meta``. Never pickled: the daemon stores tensors as safetensors."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


@runtime_checkable
class SteppedState(Protocol):
    """An optimiser as the client's training state sees it: something that steps, with a state dict in
    ``torch.optim``'s layout ({"state": {index: {name: tensor}}, "param_groups": [...]})."""

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...

    def step(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class ClientParadigm(abc.ABC):
    """Client half of a paradigm. One instance per run inside each client daemon."""

    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        self.config = config
        self.index = index
        self.num_clients = num_clients
        self.data = data
        self.segments: dict[str, nn.Module] = {}
        # This daemon's device (the daemon sets ``config.device`` to its ``--device``, else the run's
        # ``client_device``) and the run's precision.
        self.placement: Placement = party_placement(
            config,
            where=f"client {index}",
            key="the client's device",
            fix="Start its daemon with --device cpu, or set client_device: cpu in the run config",
        )

    @abc.abstractmethod
    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary: ...

    @abc.abstractmethod
    async def evaluate(self, link: ClientLink, round: int) -> PhaseSummary: ...

    def optimizers(self) -> dict[str, SteppedState]:
        """The optimisers this client steps, by attribute name: found on the instance, so that no paradigm has
        to list them for ``training_state``. Any ``torch.optim.Optimizer`` and the kit's own SGD count (whatever
        steps and has a state dict; a segment has no ``step``)."""
        return {name: value for name, value in sorted(vars(self).items()) if isinstance(value, SteppedState)}

    def training_state(self) -> TrainingState:
        """Segments and optimisers (momentum buffers and the like), copied: what a restarted client daemon loads
        to resume exactly. A paradigm with more state of its own overrides both methods and calls these."""
        tensors: dict[str, torch.Tensor] = {}
        for name, segment in sorted(self.segments.items()):
            for key, tensor in segment.state_dict().items():
                tensors[f"segment/{name}/{key}"] = tensor.detach().clone()
        optimizers: dict[str, Any] = {}
        for name, optimizer in self.optimizers().items():
            state = optimizer.state_dict()
            scalars: dict[str, dict[str, Any]] = {}
            for index, values in state["state"].items():
                for key, value in values.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optimizer/{name}/{index}/{key}"] = value.detach().clone()
                    else:
                        scalars.setdefault(str(index), {})[key] = value
            optimizers[name] = {"param_groups": state["param_groups"], "scalars": scalars}
        return TrainingState(tensors, {"segments": sorted(self.segments), "optimizers": optimizers})

    def load_training_state(self, state: TrainingState) -> None:
        """Loads what ``training_state`` gave; raises ValueError, changing nothing, when it does not fit this
        client (other segments, names, shapes or dtypes, other optimisers or parameter groups)."""
        segments: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.segments}
        per_optimizer: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in self.optimizers()}
        for flat, tensor in state.tensors.items():
            kind, name, rest = (flat.split("/", 2) + ["", ""])[:3]
            if kind == "segment" and name in segments and rest:
                segments[name][rest] = tensor
            elif kind == "optimizer" and name in per_optimizer and "/" in rest:
                index, key = rest.split("/", 1)
                if not index.isdigit():
                    raise ValueError(f"optimizer tensor {flat!r} has no parameter index")
                per_optimizer[name].setdefault(int(index), {})[key] = tensor
            else:
                raise ValueError(f"tensor {flat!r} belongs to no segment or optimiser of this client")
        for name, module in self.segments.items():
            own = module.state_dict()
            if set(segments[name]) != set(own):
                raise ValueError(f"segment {name!r}: saved tensors {sorted(segments[name])} != {sorted(own)}")
            for key, tensor in own.items():
                saved = segments[name][key]
                if saved.shape != tensor.shape or saved.dtype != tensor.dtype:
                    raise ValueError(
                        f"segment {name!r} tensor {key!r}: saved {tuple(saved.shape)} {saved.dtype}, "
                        f"expected {tuple(tensor.shape)} {tensor.dtype}"
                    )
        saved_optimizers = state.meta.get("optimizers", {})
        if sorted(saved_optimizers) != sorted(per_optimizer):
            raise ValueError(f"saved optimisers {sorted(saved_optimizers)} != this client's {sorted(per_optimizer)}")
        loads: list[tuple[SteppedState, dict[str, Any]]] = []
        for name, optimizer in self.optimizers().items():
            current = optimizer.state_dict()
            groups = saved_optimizers[name].get("param_groups")
            if not isinstance(groups, list) or [g.get("params") for g in groups] != [
                g["params"] for g in current["param_groups"]
            ]:
                raise ValueError(f"optimiser {name!r}: saved parameter groups do not match this client's")
            params = [p for group in optimizer.param_groups for p in group["params"]]
            values = per_optimizer[name]
            for position, scalars in saved_optimizers[name].get("scalars", {}).items():
                values.setdefault(int(position), {}).update(scalars)
            for param, entries in values.items():
                if not 0 <= param < len(params):
                    raise ValueError(f"optimiser {name!r}: state for parameter {param} of {len(params)}")
                for key, value in entries.items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[param].shape:
                        raise ValueError(f"optimiser {name!r} {key!r} of parameter {param}: shape {tuple(value.shape)}")
            loads.append((optimizer, {"state": values, "param_groups": groups}))
        for name, module in self.segments.items():
            module.load_state_dict(segments[name], strict=True)
        for optimizer, optimizer_state in loads:
            optimizer.load_state_dict(optimizer_state)


@dataclass
class ParadigmSpec:
    """Registry entry: names, the two halves, and the paradigm's own config keys."""

    name: str
    server: type[ServerParadigm]
    client: type[ClientParadigm]
    # What crosses the cut for client ``index`` of a run with this config: the stages of a step, what goes up
    # and down in each. Both ends hold it and validate against it (``slperf.common.protocol.exchange``).
    exchange: Callable[[RunConfig, int], Exchange]
    aliases: tuple[str, ...] = ()
    options: Mapping[str, tuple[type, Any]] = field(default_factory=dict)  # key -> (type, default)
    option_aliases: Mapping[str, str] = field(default_factory=dict)  # SLPerf key -> key
    validate: Callable[[dict[str, Any]], None] | None = None
    summary: str = ""
    # Where this implementation knowingly differs from SLPerf's code, and why (``slperf paradigms --details``).
    deviations: str = ""
    # Alias -> options it implies (e.g. parallel_U_Shape -> {"schedule": "parallel"}); a config that names
    # the alias and gives the option another value is refused (see ``validate_options``).
    alias_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Builds a client's data when the default shard (build_client_data) is not the paradigm's (multitask:
    # each task's data set split among the task's clients). Same signature as build_client_data.
    client_data: Callable[..., ClientData] | None = None
    # Wall time per sample relative to vanilla SL, a prior for the benchmark's time estimates until it has
    # measured the paradigm itself (U-shaped moves two cut tensors each way, FedAvg has no cut at all).
    time_factor: float = 1.0
    # Whether the server averages client segments (FedAvg of bottoms, tops or whole models): only such a paradigm
    # accepts ``aggregation`` / ``trim_fraction`` (``kit.aggregate``).
    averages: bool = False
    # What the server and a client get to see of each other in this paradigm (``threats``): the threat-model table
    # of docs/threat_model.md and ``slperf paradigms --details``, checked against the wire by the tests.
    threats: ThreatModel = UNDECLARED
    # What the parties see when the run has a separate fed server (``fed_server:``) that averages the client segments
    # instead of the server; None: the paradigm offers no fed server (``fed_server`` is refused).
    fed_server_threats: ThreatModel | None = None

    def threats_for(self, config: RunConfig) -> ThreatModel:
        """The threat model of this run's topology: with a fed server, the one it declares for that."""
        if config.fed_server and self.fed_server_threats is not None:
            return self.fed_server_threats
        return self.threats

    def __post_init__(self) -> None:
        # The run config's ``compress`` applies to every paradigm's cut tensors alike, so it is added here to the
        # exchange each paradigm declares (``with_compression``), not by each paradigm.
        declared = self.exchange
        if getattr(declared, "declared", None) is not None:  # dataclasses.replace of a spec: already wrapped
            return

        def exchange(config: RunConfig, index: int) -> Exchange:
            up, down = compress_codecs(config)
            return with_compression(declared(config, index), up, down)

        exchange.declared = declared  # type: ignore[attr-defined]
        self.exchange = exchange

    def option_keys(self) -> set[str]:
        return set(self.options) | set(self.option_aliases)

    def canonical_option(self, key: str) -> str:
        return self.option_aliases.get(key, key)

    def validate_options(self, given: Mapping[str, Any], alias: str | None = None) -> dict[str, Any]:
        """Checks and completes the options; ``alias`` is the name the config used for this paradigm, whose
        implied options (``alias_options``) an explicit option may not contradict."""
        from slperf.common.config import ConfigError

        out: dict[str, Any] = {}
        for key, value in given.items():
            key = self.canonical_option(key)
            if key not in self.options:
                raise ConfigError(
                    f"paradigm '{self.name}' has no option '{key}' (options: "
                    f"{', '.join(sorted(self.options)) or 'none'})"
                )
            kind, default = self.options[key]
            if value is None and default is None:
                out[key] = None
                continue
            ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise ConfigError(f"option '{key}' of paradigm '{self.name}' must be {kind.__name__}, got {value!r}")
            out[key] = value
        for key, implied in self.alias_options.get(alias or "", {}).items():
            if key in out and out[key] != implied:
                raise ConfigError(
                    f"paradigm '{alias}' is '{self.name}' with {key}: {implied}, but the config sets "
                    f"{key}: {out[key]}; use paradigm '{self.name}' for that"
                )
        for key, (_, default) in self.options.items():
            out.setdefault(key, default)
        if self.validate:
            self.validate(out)
        return out
