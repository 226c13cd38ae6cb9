"""The fed server's rounds: who may upload, the valid uploads, and the average once the main server settles a round.

The main server declares a round twice and sends no weights either time: before it (``open``: the clients allowed
to upload and the segment's layout) and after it (``settle``: the clients that trained, each with the samples the
main server counted, which are FedAvg's weights, never a client's own claim). Clients upload their trained bottoms
in between. An upload is checked on arrival, with the same checks the main server applies to weights it receives
(``check_state`` against the declared layout, then finiteness), so a client's garbage is refused to that client
alone and never reaches the average; a participant without a valid upload at ``settle`` (crashed, refused) is left
out. The average is then what every client fetches before its next pass (``latest``). Nothing here blocks: the main
server settles a round only after every participant has reported its pass done, which it does after its upload.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import torch

from slperf.common.paradigms.kit.aggregate import Aggregation, AggregationRule, aggregate, non_finite
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.exchange import TensorLayout
from slperf.common.protocol.types import State
from slperf.common.wire.codec import check_state

# Runs whose rounds are kept (the main server runs one at a time; a few cover a run that starts while the last
# one's final fetches are still coming in). Older ones are forgotten.
KEPT_RUNS = 4


class Refused(Exception):
    """An upload, fetch or declaration the fed server will not act on; ``code`` is the gRPC status it answers."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class RoundState(enum.Enum):
    OPEN = "open"
    SETTLED = "settled"


@dataclass
class _Round:
    segment: str
    expected: dict[str, torch.Tensor]  # the declared layout, as empty tensors on the meta device
    rule: AggregationRule
    allowed: frozenset[str]
    uploads: dict[str, State] = field(default_factory=dict)
    state: RoundState = RoundState.OPEN


@dataclass
class _Run:
    rounds: dict[int, _Round] = field(default_factory=dict)
    settled: int = -1  # the last round settled
    average: State | None = None  # the latest average (of round ``averaged_round``)
    averaged_round: int = -1
    members: set[str] = field(default_factory=set)  # every client declared in one of its rounds: who may fetch


@dataclass(frozen=True)
class Settlement:
    """What settling a round did: whose uploads were averaged (empty: no average, the previous one stays) and which
    participants had none."""

    averaged: list[str]
    missing: list[str]


def rule_of(aggregation: str, trim_fraction: float) -> AggregationRule:
    try:
        method = Aggregation(aggregation or Aggregation.FEDAVG)
    except ValueError:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unknown aggregation {aggregation!r}") from None
    if method == Aggregation.TRIMMED_MEAN and not 0 <= trim_fraction < 0.5:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    return AggregationRule(method, trim_fraction if method == Aggregation.TRIMMED_MEAN else 0.0)


class FedAggregator:
    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self.uploads_accepted = 0
        self.uploads_refused = 0

    def _run(self, run_id: str, create: bool = False) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            if not create:
                raise Refused(grpc.StatusCode.NOT_FOUND, f"run {run_id!r} has no round declared here")
            run = self._runs[run_id] = _Run()
            while len(self._runs) > KEPT_RUNS:
                del self._runs[next(iter(self._runs))]
        return run

    def open(
        self,
        run_id: str,
        round: int,
        segment: str,
        layout: Sequence[TensorLayout],
        rule: AggregationRule,
        allowed: Sequence[str],
    ) -> None:
        """Starts round ``round``: ``allowed`` may upload a ``segment`` of exactly ``layout``. Opening a round again
        (the main server restarted it) starts it afresh."""
        if not layout:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a round needs the segment's layout")
        run = self._run(run_id, create=True)
        if round <= run.settled:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"round {round} of run {run_id!r} is already settled")
        expected = {t.name: torch.empty(t.shape, dtype=t.dtype, device="meta") for t in layout}
        run.rounds = {r: v for r, v in run.rounds.items() if r > run.settled}
        run.rounds[round] = _Round(segment, expected, rule, frozenset(allowed))
        run.members.update(allowed)

    def upload(self, run_id: str, round: int, segment: str, client_id: str, tensors: State) -> None:
        """Takes ``client_id``'s trained segment for the round, or raises ``Refused`` saying why (the round is not
        open, the client is not allowed, the tensors are not the declared layout or not finite). A second upload of
        one client in one round replaces its first (its pass was repeated after a reconnect)."""
        try:
            rnd = self._run(run_id).rounds.get(round)
            if rnd is None or rnd.state is not RoundState.OPEN:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"round {round} of run {run_id!r} is not open")
            if client_id not in rnd.allowed:
                raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"client {client_id} takes no part in round {round}")
            if segment != rnd.segment:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT, f"round {round} averages {rnd.segment!r}, not {segment!r}"
                )
            try:
                check_state(tensors, rnd.expected)
            except WireError as err:
                raise Refused(err.code, f"unusable weights: {err.message}") from None
            bad = non_finite(tensors)
            if bad:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unusable weights: not finite in {sorted(bad)}")
        except Refused:
            self.uploads_refused += 1
            raise
        rnd.uploads[client_id] = dict(tensors)
        self.uploads_accepted += 1

    def settle(self, run_id: str, round: int, samples: Mapping[str, int]) -> Settlement:
        """Ends round ``round``: the valid uploads of the participants in ``samples`` are aggregated by the round's
        rule (FedAvg weighted by those samples). A participant without a valid upload is left out; the previous
        average stays when nothing can be averaged."""
        run = self._run(run_id)
        rnd = run.rounds.get(round)
        if rnd is None or rnd.state is not RoundState.OPEN:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"round {round} of run {run_id!r} is not open")
        outsiders = sorted(set(samples) - rnd.allowed)
        if outsiders:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"{outsiders} were not allowed to take part in round {round}"
            )
        present = [cid for cid in sorted(samples) if cid in rnd.uploads]
        missing = [cid for cid in sorted(samples) if cid not in rnd.uploads]
        average = aggregate([(rnd.uploads[cid], int(samples[cid])) for cid in present], rule=rnd.rule)
        rnd.state, rnd.uploads = RoundState.SETTLED, {}
        run.settled = max(run.settled, round)
        if average is None:
            return Settlement([], missing)
        run.average, run.averaged_round = average, round
        return Settlement([cid for cid in present if samples[cid] > 0], missing)

    def latest(self, run_id: str, upto: int, client_id: str) -> tuple[int, State]:
        """The run's latest average for ``client_id``, once round ``upto`` is settled (the main server settles a round
        before it sends any client its next pass); ``Refused`` while it is not, when no round has averaged anything
        yet, or when the client was never declared in the run (the average is the run's clients' alone)."""
        run = self._run(run_id)
        if client_id not in run.members:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"client {client_id} takes no part in run {run_id!r}")
        if run.settled < upto:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"round {upto} of run {run_id!r} is not settled (last settled: {run.settled})",
            )
        if run.average is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"run {run_id!r} has no average yet")
        return run.averaged_round, run.average
