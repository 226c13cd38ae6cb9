"""In-memory values of the session protocol and the states of its parties.

These are plain dataclasses and enums over tensors: the serde module (``slperf.common.wire.serde``)
converts each to and from its protobuf message, paradigms produce and consume them, and the daemons keep
the states. Keeping them below every other layer is what lets the wire layer stay ignorant of paradigms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from slperf.common.protocol.compression import NO_CODEC, Arrived, Codec

State = dict[str, torch.Tensor]


class Phase(enum.IntEnum):
    """Which pass a step belongs to (the values are the protobuf enum's)."""

    TRAIN = 1
    EVAL = 2


@dataclass(frozen=True)
class StepRef:
    """Which run, round, step (and sub-exchange) a message belongs to: how stale or duplicate ones are caught."""

    run_id: str
    round: int
    step: int
    phase: Phase = Phase.TRAIN
    stage: str = ""

    def same_step(self, other: StepRef) -> bool:
        """True when both name the same exchange; frozen dataclass equality, spelled out for readers."""
        return self == other


@dataclass
class CutTensor:
    """What a client sent for one exchange of a step: activations at the cut (the gradient at the tail's input,
    for U-shaped), and what the paradigm's exchange declares with it: labels where the server owns the loss,
    sample ids where parties must agree on them, further named tensors."""

    ref: StepRef
    tensor: torch.Tensor
    labels: torch.Tensor | None = None
    sample_ids: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    # How ``tensor`` crosses the wire: the sender's link sets the codec its exchange declares; the receiver's
    # decoder records how it arrived, which the receiver's exchange checks (None: not from the wire).
    codec: Codec = NO_CODEC
    arrived: Arrived | None = None


@dataclass
class CutReply:
    """The server's answer to one CutTensor: a gradient (or U-shaped's forward output) and batch metrics."""

    ref: StepRef
    tensor: torch.Tensor | None
    loss: float = 0.0
    correct: int = 0
    count: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    codec: Codec = NO_CODEC  # as CutTensor's
    arrived: Arrived | None = None


@dataclass
class PhaseSummary:
    """A client's account of a finished train or eval pass; ``samples`` weights FedAvg."""

    samples: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    correct: int = 0

    def add(self, samples: int, loss: float = 0.0, correct: int = 0) -> None:
        """Accounts one finished step (the one place the four running totals are kept)."""
        self.samples += samples
        self.steps += 1
        self.loss_sum += loss
        self.correct += correct

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.steps if self.steps else 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else 0.0


class SessionState(enum.StrEnum):
    """A client session as the server sees it (shown by ``slperf status``)."""

    IDLE = "idle"
    IN_RUN = "in-run"
    DISCONNECTED = "disconnected"


class RunState(enum.StrEnum):
    """A run's life cycle. The values are what the Control service and the run folder's state.json carry."""

    # Waiting in the server's queue for the run before it to end (a run starts at once when none is going).
    QUEUED = "queued"
    PENDING = "pending"
    WAITING_FOR_CLIENTS = "waiting-for-clients"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    # The server shut down mid-run: the run is over for this server process, and resumes from its checkpoint
    # when the server starts again, so the folder gets no final state.json.
    INTERRUPTED = "interrupted"

    @property
    def ended(self) -> bool:
        """The run's task is over (a new run may start)."""
        return self in ENDED_RUN_STATES

    @property
    def final(self) -> bool:
        """Over for good: recorded in the run folder, never resumed; what an operator following a run waits for."""
        return self in FINAL_RUN_STATES


FINAL_RUN_STATES = frozenset({RunState.FINISHED, RunState.FAILED, RunState.STOPPED})
ENDED_RUN_STATES = FINAL_RUN_STATES | {RunState.INTERRUPTED}
