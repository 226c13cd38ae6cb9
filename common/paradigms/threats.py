"""What each party of a paradigm gets to see of the others: the paradigm's threat model, declared by the paradigm.

Split learning is chosen for privacy, so which tensors reach an honest-but-curious server (cut activations,
labels, gradients from a client's tail, the clients' own weights) and which reach a client is as much a property
of a paradigm as its exchange. Each paradigm module states it on its ``ParadigmSpec`` (``threats``), so a new
paradigm documents itself and touches no core file; ``slperf paradigms --details`` and docs/threat_model.md
render it, and tests/common/paradigms/test_threats.py checks every declaration against what actually crosses
the wire in a round of the paradigm.

This module is part of the paradigm API (like ``base``), not a plug-in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Seen(enum.Enum):
    """A kind of tensor one party receives from another. The first four reach the server (client -> server), the
    last three reach a client (server -> client)."""

    ACTIVATIONS = "cut activations"  # the client segment's output on the client's inputs
    LABELS = "labels"  # the client's labels, with the activations
    TAIL_GRADIENTS = "gradients from a tail"  # d loss / d (server's output), computed by the client's tail (U-shaped)
    CLIENT_WEIGHTS = "client weights"  # a client's trained segment weights (ModelState up)
    CUT_GRADIENTS = "cut gradients"  # d loss / d (client's activations), computed by the server
    SERVER_OUTPUT = "server output"  # the server segment's forward output (U-shaped: the tail's input)
    WEIGHTS = "weights from the server"  # client segments the server sends: handed on, averaged, or its own back

    @property
    def to_server(self) -> bool:
        return self in TO_SERVER


TO_SERVER = frozenset({Seen.ACTIVATIONS, Seen.LABELS, Seen.TAIL_GRADIENTS, Seen.CLIENT_WEIGHTS})


@dataclass(frozen=True)
class Exposure:
    """One kind of tensor a party sees, and when (e.g. "every training and evaluation batch")."""

    what: Seen
    when: str


@dataclass(frozen=True)
class ThreatModel:
    """What the server and a client see in one paradigm (its default options, unless ``when`` says otherwise).

    ``producer`` says how the server comes to hold the weights that produced the activations it sees (vanilla's
    hand-off, SplitFed's FedAvg), which makes white-box model inversion possible; empty when it never does.
    """

    server: tuple[Exposure, ...]
    client: tuple[Exposure, ...]
    producer: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        for exposure in self.server:
            if not exposure.what.to_server:
                raise ValueError(f"{exposure.what.name} reaches a client, not the server")
        for exposure in self.client:
            if exposure.what.to_server:
                raise ValueError(f"{exposure.what.name} reaches the server, not a client")

    def server_sees(self, what: Seen) -> bool:
        return any(e.what is what for e in self.server)

    def client_sees(self, what: Seen) -> bool:
        return any(e.what is what for e in self.client)

    @property
    def server_holds_producer(self) -> bool:
        """The server holds the client weights that produced the activations it sees (white-box inversion)."""
        return self.server_sees(Seen.ACTIVATIONS) and self.server_sees(Seen.CLIENT_WEIGHTS) and bool(self.producer)

    def describe(self) -> list[str]:
        """The threat model as ``slperf paradigms --details`` prints it."""
        lines = ["the server sees:"]
        lines += [f"  {e.what.value}: {e.when}" for e in self.server] or ["  nothing of the clients' data"]
        lines.append("a client sees:")
        lines += [f"  {e.what.value}: {e.when}" for e in self.client] or ["  nothing from the server"]
        holds = f"yes: {self.producer}" if self.server_holds_producer else "no"
        lines.append(f"the server holds the weights that produced the activations it sees: {holds}")
        if self.notes:
            lines.append(f"notes: {self.notes}")
        return lines


UNDECLARED = ThreatModel(server=(), client=(), notes="this paradigm declares no threat model")

_SERVER_COLUMNS = (Seen.ACTIVATIONS, Seen.LABELS, Seen.TAIL_GRADIENTS, Seen.CLIENT_WEIGHTS)
_CLIENT_COLUMNS = (Seen.CUT_GRADIENTS, Seen.SERVER_OUTPUT, Seen.WEIGHTS)


def threat_table(rows: Iterable[tuple[str, ThreatModel]]) -> str:
    """A markdown table, one row per paradigm: what the server and a client see ("yes" / "-"), and whether the
    server holds the producing weights. The details ("when") are in each paradigm's ``--details``."""
    head = (
        ["paradigm"]
        + [f"server: {s.value}" for s in _SERVER_COLUMNS]
        + [f"client: {s.value}" for s in _CLIENT_COLUMNS]
        + ["server holds the producing weights"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, model in rows:
        cells = [name]
        cells += ["yes" if model.server_sees(s) else "-" for s in _SERVER_COLUMNS]
        cells += ["yes" if model.client_sees(s) else "-" for s in _CLIENT_COLUMNS]
        cells.append(model.producer if model.server_holds_producer else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
