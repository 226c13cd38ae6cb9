"""The session protocol's messages as the daemons handle them in memory, one dataclass per message.

``slperf.common.wire.serde`` converts each to and from its protobuf message (``proto/slperf/v1/session.proto``),
decoding every tensor exactly once and validating everything a message can get wrong on its own (missing
fields, bad tensors, malformed JSON); what depends on the run (which step is expected, which shapes the
paradigm declared) is checked by whoever expects the message. The cut-tensor messages are in ``types``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from slperf.common.protocol.exchange import Exchange
from slperf.common.protocol.types import CutReply, CutTensor, PhaseSummary, State, StepRef


# -- session set-up ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """Client -> server, first on every session."""

    protocol_version: int
    client_id: str
    software_version: str = ""


@dataclass(frozen=True)
class Welcome:
    """Server -> client, the answer to Hello: every limit the session is held to, so that a client (of any
    implementation) can stay within them instead of discovering them from errors."""

    protocol_version: int
    session_id: str
    max_payload_bytes: int
    chunk_bytes: int
    max_envelope_bytes: int
    max_tensor_elements: int
    max_tensor_dims: int
    messages_per_second: float
    message_burst: int
    write_timeout_seconds: float


# -- instructions (server -> client) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSetup:
    run_id: str
    config_json: str  # parsed by the client with the same strict validation as a config file
    client_index: int
    num_clients: int
    exchange: Exchange  # what this client's messages must look like; the server refuses anything else


@dataclass(frozen=True)
class TrainEpoch:
    run_id: str
    round: int
    options: dict[str, Any] = field(default_factory=dict)  # paradigm-specific (e.g. async SL's client state)


@dataclass(frozen=True)
class Evaluate:
    run_id: str
    round: int


@dataclass(frozen=True)
class RequestWeights:
    run_id: str
    round: int
    segment: str


@dataclass(frozen=True)
class Finish:
    run_id: str
    reason: str


Instruction = RunSetup | TrainEpoch | Evaluate | RequestWeights | Finish


# -- reports (client -> server) ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The client built the run's paradigm half and holds this many samples."""

    run_id: str
    train_samples: int
    test_samples: int


@dataclass(frozen=True)
class PhaseDone:
    """A client's train or eval pass ended; ``ref.step`` is the number of steps it took."""

    ref: StepRef
    summary: PhaseSummary


# -- either direction --------------------------------------------------------------------------------------------
@dataclass
class ModelState:
    """Named tensors of one model segment, for aggregation and weight hand-off."""

    run_id: str
    round: int
    segment: str
    tensors: State
    num_samples: int = 0


@dataclass(frozen=True)
class ErrorReport:
    """An in-stream error: the offending message was dropped (or the sender gave up a pass), the session goes on."""

    code: grpc.StatusCode
    message: str


ClientMessage = Hello | Ready | CutTensor | ModelState | PhaseDone | ErrorReport
ServerMessage = (
    Welcome | RunSetup | TrainEpoch | Evaluate | RequestWeights | Finish | CutReply | ModelState | ErrorReport
)
