"""AsyncSL: loss-based asynchronous split learning (Chen, Li, Chakrabarti 2021, arXiv 2107.09786).

Paradigm name ``async`` (SLPerf alias ``Asynchronous``); the module is ``async_sl`` because ``async`` is a
Python keyword.

Who holds what: as vanilla SL. Each client holds the bottom and its data, the server the top and the loss;
labels go up with the activations. Clients train one after another (a ring, in client-index order) and the
bottom weights are handed on *through the server*.

Per client the server runs a state machine that decides how much that client's turn costs:
  * A (normal): the client receives the current bottom, sends activations + labels per batch, gets the
    gradient back and steps its bottom; the server steps the top and afterwards collects the bottom to
    hand on. 2 messages per batch, as vanilla.
  * B (client frozen): the client receives the current bottom and sends activations + labels (computed
    without autograd: no backward, no step on the client); the server still steps its top on them and
    answers each batch with its loss / accuracy but *no* gradient (``CutReply.tensor`` is None). The bottom is
    not collected afterwards (it cannot have changed). The server keeps every (activations, labels) batch
    of the client's turn: that cache replaces the client in state C.
  * C (client silent): the server does not contact the client at all (no ``client.train``). It trains its
    top for one epoch on the activations cached for that client's samples in its last B turn, reshuffled
    into new batches of ``batch_size`` (seeded by seed, client index and round). Nothing crosses the wire.
The state reaches the client in the TrainEpoch options (``{"state": "A"}`` or ``"B"``).

Transitions, after each of the client's turns, from the mean per-batch training loss *the server computed*
for that turn (so a client cannot steer it): with ``previous`` the loss of its previous turn,
``improvement = (previous - loss) / previous`` and the option ``loss_threshold`` (SLPerf key ``thred``,
default 0.1);
  * the loss got worse (``loss > previous``): back to A (the client's features need updating again);
  * else if ``improvement < loss_threshold``: one step on, A -> B -> C (C stays C);
  * else: unchanged.
The first turn has no previous loss and stays in A. ``loss_threshold: 0`` never leaves A (= vanilla SL). In C
the loss is the top's loss on the cached activations, so a client leaves C only when that loss gets worse.

Evaluation: as vanilla, through the client that trained last (else any reachable one) with the current
bottom: it streams the test activations and labels, the server scores them with its top.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from slperf.common.config import ConfigError, RunConfig
from slperf.common.devices import cut_to_host
from slperf.common.paradigms.base import (
    ClientHandle,
    ClientLink,
    ClientMisbehaved,
    ParadigmSpec,
    RoundResult,
    ServerContext,
)
from slperf.common.paradigms.kit.bottom_client import BottomClient
from slperf.common.paradigms.kit.rounds import ring
from slperf.common.paradigms.kit.serving import compute_or_refuse
from slperf.common.paradigms.kit.steps import PoisonedStep, top_train_step
from slperf.common.paradigms.kit.top_server import HandedOnBottomServer, top_exchange
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.exchange import Exchange
from slperf.common.protocol.types import CutReply, Phase, PhaseSummary, StepRef

DEVIATIONS = """\
* In state C SLPerf's client re-sent its *last cached activation batch* for every training and
  validation step (so no uplink was saved and validation scored one stale training batch). Here a client
  in C sends nothing, the server trains on all the activations it cached in state B, and evaluation always
  uses fresh activations from the current bottom.
* SLPerf decided one global state once per ring from an average over hard-coded constants (156 batches x 3
  clients) that included validation losses, and refreshed the reference loss just before comparing it,
  so it always left A after the first ring. Here every client has its own state, decided after each of its
  turns from its own training loss with a *relative* improvement threshold (loss_threshold).
* SLPerf pickled the whole client module through the server; here only the bottom's tensors travel
  (set_weights / get_weights), copied into the live module so the client's optimiser (and its
  momentum) keeps working across turns; SLPerf rebuilt the optimiser on every turn.
* No 8-bit quantisation of activations/gradients (the paper's second technique; SLPerf has none either).
* The activation cache is memory on the server (shard size x cut width x 4 bytes per client in B/C); it
  is not part of the checkpoint. After a server restart a client whose state is C but whose cache is gone
  takes one turn in state B to rebuild it; the same happens if a client dropped out during its B turn.
* A client that drops out (ClientGone) loses its turn, keeps its state, and the ring goes on."""


class TurnState(enum.StrEnum):
    """How much a client's turn costs (see the module docstring); the value travels in the TrainEpoch
    options and is what the round records and the checkpoint keep."""

    NORMAL = "A"
    FROZEN = "B"
    SILENT = "C"


NEXT = {TurnState.NORMAL: TurnState.FROZEN, TurnState.FROZEN: TurnState.SILENT, TurnState.SILENT: TurnState.SILENT}


def next_state(state: str, previous: float | None, loss: float, loss_threshold: float) -> TurnState:
    """The per-client transition after one turn (see the module docstring)."""
    state = TurnState(state)
    if previous is None or not math.isfinite(previous) or not math.isfinite(loss):
        return state
    if loss > previous:
        return TurnState.NORMAL
    improvement = (previous - loss) / previous if previous > 0 else 0.0
    return NEXT[state] if improvement < loss_threshold else state


class AsyncServer(HandedOnBottomServer):
    """A ring with the top, the handed-on bottom and evaluation through the client that trained last (the
    kit's ``HandedOnBottomServer``), plus a per-client A/B/C state deciding each client's turn."""

    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.loss_threshold = float(config.options.get("loss_threshold", 0.1))
        self.states: dict[str, TurnState] = {}  # client id -> A/B/C for its next turn
        self.losses: dict[str, float] = {}  # client id -> server-side mean training loss of its last turn
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # client id -> (acts, labels) from B

    # -- one turn per state ---------------------------------------------------------------------------------
    async def _turn_online(self, client: ClientHandle, round: int, state: TurnState) -> PhaseSummary:
        """States A and B: the client computes activations with the current bottom and sends them with its
        labels; the server steps its top on every batch. In A the gradient goes back and the bottom is
        collected afterwards; in B no gradient goes back and the batches are cached for state C."""
        await client.set_weights("bottom", self.bottom_state, round)
        summary = PhaseSummary()  # the server's own figures: they drive the state machine
        acts, labels = [], []
        stream = client.train(round, {"state": state.value})
        async for batch in stream:
            args = (self.top, self.optimizer, batch.tensor, batch.labels)
            out = await compute_or_refuse(self.ctx, client, batch, top_train_step, *args)
            summary.add(out.count, out.loss, out.correct)
            if state == TurnState.FROZEN:
                assert batch.labels is not None  # the exchange declares labels with every cut tensor
                acts.append(batch.tensor)
                labels.append(batch.labels)
            grad = out.grad if state == TurnState.NORMAL else None
            await client.reply(CutReply(batch.ref, grad, out.loss, out.correct, out.count))
        if state == TurnState.NORMAL:
            self.bottom_state, _ = await client.get_weights("bottom", round, expected=self.bottom_state)
        elif acts:
            self.cache[client.client_id] = (torch.cat(acts), torch.cat(labels))
        return summary

    async def _turn_cached(self, client: ClientHandle, round: int) -> PhaseSummary:
        """State C: one epoch of the top on the client's cached activations; the client is not contacted. A cached
        batch the server refuses (poisoned: nothing of it applied) ends the turn, drops the cache (the client's
        next turn is in state A) and the client from the round as misbehaved."""
        acts, labels = self.cache[client.client_id]
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + client.index * 1009 + round)
        order = torch.randperm(labels.shape[0], generator=generator)
        summary = PhaseSummary()
        for start in range(0, order.numel(), self.config.batch_size):
            pick = order[start : start + self.config.batch_size]
            try:
                out = await self.ctx.compute(top_train_step, self.top, self.optimizer, acts[pick], labels[pick])
            except PoisonedStep as err:
                self.cache.pop(client.client_id, None)
                self.states[client.client_id] = TurnState.NORMAL
                step = start // self.config.batch_size
                reason = f"round {round} cached step {step}: the server {err}; its cached activations were dropped"
                raise ClientMisbehaved(client.client_id, f"poisoned compute: {reason}") from None
            summary.add(out.count, out.loss, out.correct)
        return summary

    async def _turn(self, client: ClientHandle, round: int, used: dict[str, TurnState]) -> PhaseSummary:
        cid = client.client_id
        state = TurnState(self.states.get(cid, TurnState.NORMAL))
        if state == TurnState.SILENT and cid not in self.cache:
            state = TurnState.FROZEN  # no cache (server restarted, or the client dropped out in B): rebuild it
        used[cid] = state
        if state == TurnState.SILENT:
            summary = await self._turn_cached(client, round)
        else:
            summary = await self._turn_online(client, round, state)
            self.last_trained = cid
        if summary.steps:
            loss = summary.loss_sum / summary.steps
            self.states[cid] = next_state(state, self.losses.get(cid), loss, self.loss_threshold)
            self.losses[cid] = loss
        if self.states.get(cid, TurnState.NORMAL) != TurnState.SILENT:
            self.cache.pop(cid, None)  # kept only for a C turn; the next B turn builds a fresh one
        return summary

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        used: dict[str, TurnState] = {}
        result = (await ring(clients, lambda c: self._turn(c, round, used))).to_result()
        result.extra["states"] = {cid: str(state) for cid, state in used.items()}
        result.extra["next_states"] = {
            c.client_id: str(self.states.get(c.client_id, TurnState.NORMAL)) for c in clients
        }
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "states": {cid: str(state) for cid, state in self.states.items()},
            "losses": dict(self.losses),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.states = {cid: TurnState(value) for cid, value in state.get("states", {}).items()}
        self.losses = dict(state.get("losses", {}))
        self.cache = {}


class AsyncClient(BottomClient):
    """The vanilla bottom client, plus state B: forward without autograd, no gradient expected, no step."""

    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary:
        state = options.get("state", TurnState.NORMAL.value)
        if state == TurnState.NORMAL:
            return await super().train_epoch(link, round, options)
        if state != TurnState.FROZEN:
            raise ValueError(f"state {state!r}: a client only takes part in states A and B")
        self.bottom.train()
        summary = PhaseSummary()
        for step, (x, y) in enumerate(self.data.train.batches(round)):
            ref = StepRef(link.run_id, round, step, Phase.TRAIN)
            inputs = self.placement.inbound(x)
            with torch.no_grad(), self.placement.autocast():
                acts = self.bottom(inputs)
                out = self.defenses.release(inputs, acts, y, round, step)  # defended like any training batch
            await link.send_cut_tensor(ref, cut_to_host(out.activations), labels=out.labels)
            reply = await link.recv_reply(ref)  # metrics only; frozen bottom
            summary.add(int(y.shape[0]), reply.loss, reply.correct)
        return summary


def _validate(options: dict[str, Any]) -> None:
    if not 0.0 <= options["loss_threshold"] <= 1.0:
        raise ConfigError(
            f"option 'loss_threshold' (SLPerf 'thred') is a relative loss improvement and must be in "
            f"[0, 1], got {options['loss_threshold']}"
        )


def _exchange(config: RunConfig, client_index: int) -> Exchange:
    """Bottom/top, except that the server withholds the gradient in the frozen state (B)."""
    return top_exchange(config, client_index, gradient_optional=True)


THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every batch of a client in state A or B, and every evaluation batch"),
        Exposure(Seen.LABELS, "with every batch"),
        Exposure(Seen.CLIENT_WEIGHTS, "each client's trained bottom after a state-A turn, to hand on"),
    ),
    client=(
        Exposure(Seen.CUT_GRADIENTS, "for each of its training batches in state A (none in B)"),
        Exposure(Seen.WEIGHTS, "before its turn: the bottom the previous client trained"),
    ),
    producer="it relays the bottom: it sends each client the bottom its turn starts from and evaluates with it",
    notes="the server keeps a client's activations and labels of its last state-B turn and trains on them in C",
)


SPEC = register(
    ParadigmSpec(
        name="async",
        server=AsyncServer,
        client=AsyncClient,
        exchange=_exchange,
        threats=THREATS,
        aliases=("Asynchronous", "asyncsl"),
        options={"loss_threshold": (float, 0.1)},
        option_aliases={"thred": "loss_threshold"},
        validate=_validate,
        summary="AsyncSL: sequential ring, weights through the server; per-client loss-based states A (normal), "
        "B (client frozen, no gradient down), C (client silent, server trains on cached activations)",
        deviations=DEVIATIONS,
    )
)
