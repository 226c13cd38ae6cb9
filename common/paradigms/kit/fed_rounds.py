"""A round of a paradigm whose clients average their bottoms on a separate fed server (``fed_server:``; Thapa et
al.'s SplitFed topology): the server declares who takes part, serves the passes, then tells the fed server who
trained on how many samples (the samples it counted). The clients upload their bottoms there before they report a
pass done and fetch the average before their next pass, so no client segment ever reaches this server; it
evaluates through a client, which holds the average by then."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from torch import nn

from slperf.common.paradigms.base import ClientHandle, EvalResult, FedServerLink, ServerContext
from slperf.common.paradigms.kit.rounds import RoundOutcome, first_available
from slperf.common.paradigms.kit.serving import evaluate_through
from slperf.common.protocol.types import PhaseSummary, State

SEGMENT = "bottom"


async def fed_round(
    fed: FedServerLink,
    round: int,
    clients: Sequence[ClientHandle],
    layout: State,
    run: Callable[
        [Sequence[ClientHandle], Callable[[ClientHandle], Awaitable[PhaseSummary]]],
        Awaitable[RoundOutcome[PhaseSummary]],
    ],
    serve: Callable[[ClientHandle], Awaitable[PhaseSummary]],
) -> tuple[RoundOutcome[PhaseSummary], set[str]]:
    """``run(clients, serve)`` between the round's declarations (``layout``: a state of the segment, whose names,
    dtypes and shapes are sent, not its values); the outcome and the ids whose bottoms the fed server averaged."""
    await fed.open_round(round, SEGMENT, [c.client_id for c in clients], layout)
    outcome = await run(clients, serve)
    averaged = await fed.settle_round(round, SEGMENT, {c.client_id: s.samples for c, s in outcome.done})
    return outcome, set(averaged)


async def evaluate_holding_average(
    ctx: ServerContext, clients: Sequence[ClientHandle], round: int, top: nn.Module
) -> EvalResult:
    """Through the first client that answers: it fetches the fed server's average itself before it evaluates."""
    misbehaved: dict[str, str] = {}
    result = await first_available(
        clients, lambda c: evaluate_through(ctx, c, round, top), "evaluate through", misbehaved
    )
    result.misbehaved.update(misbehaved)
    return result
