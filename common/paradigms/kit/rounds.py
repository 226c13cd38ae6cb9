"""Running the clients of a round, in parallel or in turn, with drop-outs sorted out once.

A paradigm hands over one coroutine per client and gets back, as values, the results of the clients that
finished (in client order) and the ids of those that dropped out (``ClientGone``). Any other exception is a
bug and is raised, after every client's coroutine has finished, so no session is left mid-exchange.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from slperf.common.paradigms.base import ClientGone, ClientHandle, ClientMisbehaved, NoClientLeft, RoundResult
from slperf.common.protocol.types import PhaseSummary

T = TypeVar("T")


@dataclass
class RoundOutcome(Generic[T]):
    """What a set of clients did: ``done`` in client order, ``dropped`` client ids in client order."""

    done: list[tuple[ClientHandle, T]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    misbehaved: dict[str, str] = field(default_factory=dict)  # dropped for what they sent: id -> reason

    def drop(self, client: ClientHandle, gone: ClientGone) -> None:
        self.dropped.append(client.client_id)
        if isinstance(gone, ClientMisbehaved):
            self.misbehaved[client.client_id] = gone.reason

    @property
    def clients(self) -> list[ClientHandle]:
        return [client for client, _ in self.done]

    def to_result(self, summary_of: Callable[[T], PhaseSummary] | None = None) -> RoundResult:
        """The round record: who trained (with the summary ``summary_of`` picks from each result; the
        result itself by default) and who dropped out."""
        result = RoundResult(participants=[], dropped=list(self.dropped), misbehaved=dict(self.misbehaved))
        for client, value in self.done:
            result.participants.append(client.client_id)
            result.per_client[client.client_id] = summary_of(value) if summary_of else value  # type: ignore[assignment]
        return result


def _sort(clients: Sequence[ClientHandle], outcomes: Sequence[T | BaseException]) -> RoundOutcome[T]:
    sorted_out: RoundOutcome[T] = RoundOutcome()
    for client, outcome in zip(clients, outcomes):
        if isinstance(outcome, ClientGone):
            sorted_out.drop(client, outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            sorted_out.done.append((client, outcome))
    return sorted_out


async def gather_round(clients: Sequence[ClientHandle], fn: Callable[[ClientHandle], Awaitable[T]]) -> RoundOutcome[T]:
    """Runs ``fn(client)`` for every client at once."""
    outcomes = await asyncio.gather(*(fn(c) for c in clients), return_exceptions=True)
    return _sort(clients, outcomes)


async def ring(clients: Sequence[ClientHandle], fn: Callable[[ClientHandle], Awaitable[T]]) -> RoundOutcome[T]:
    """Runs ``fn(client)`` for one client after another, in the given order; a client that drops out loses
    its turn and the ring goes on. ``fn`` updates whatever is handed on only once its turn succeeded."""
    outcome: RoundOutcome[T] = RoundOutcome()
    for client in clients:
        try:
            outcome.done.append((client, await fn(client)))
        except ClientGone as gone:
            outcome.drop(client, gone)
    return outcome


async def first_available(
    clients: Sequence[ClientHandle],
    fn: Callable[[ClientHandle], Awaitable[T]],
    task: str,
    misbehaved: dict[str, str] | None = None,
) -> T:
    """``fn`` through the first client (in the given order) that does not drop out; ``NoClientLeft`` (naming
    ``task``) when every one does. A client skipped for what it sent (``ClientMisbehaved``) is added to
    ``misbehaved`` (id -> reason) when given, so the skip is recorded, not only survived."""
    for client in clients:
        try:
            return await fn(client)
        except ClientMisbehaved as gone:
            if misbehaved is not None:
                misbehaved[client.client_id] = gone.reason
        except ClientGone:
            continue
    raise NoClientLeft(task)


def latest_first(clients: Sequence[ClientHandle], client_id: str | None) -> list[ClientHandle]:
    """The clients with ``client_id`` (e.g. the one that trained last) moved to the front."""
    return sorted(clients, key=lambda c: c.client_id != client_id)
