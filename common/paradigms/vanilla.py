"""Vanilla split learning (Gupta & Raskar 2018; Vepakomma et al. 2018).

Protocol, per round:
  1. Clients train one after another (a ring, in client-index order).
  2. Before its turn a client receives the latest bottom weights from the server (``set_weights``).
  3. Per batch it sends its cut-layer activations and labels; the server runs the top, takes an SGD step
     and returns the gradient of the activations; the client back-propagates and steps its bottom.
  4. After its turn the server collects the client's bottom (``get_weights``) to hand on to the next one.
  5. After the ring, one client (the last that trained) evaluates: it streams test activations and the
     server scores them with the top.

Deliberate deviations from SLPerf's code:
  * The bottom weights are relayed *through the server*; SLPerf wrote the module to a shared file, which
    separate silos do not have.
  * The hand-off copies weights into the live bottom, so the client's optimiser keeps stepping it. SLPerf
    replaced the module object and left the optimiser on the old one: after the first turn its client
    bottoms never learned.
  * A client that drops out loses its turn and the ring goes on (the top keeps the steps it took).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from slperf.common.paradigms.base import (
    ClientGone, ClientHandle, EvalResult, ParadigmSpec, RoundResult, ServerContext,
)
from slperf.common.paradigms.bottom_client import BottomClient
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.steps import clone_state, make_optimizer
from slperf.common.paradigms.top_server import TopHolder, evaluate_first_available, serve_training


class VanillaServer(TopHolder):
    def __init__(self, config, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        split = self.build_split()
        self.top = split.segments[1]
        self.optimizer = make_optimizer(self.top.parameters(), config)
        self.bottom_state = clone_state(split.segments[0])
        self.train_spec = self.activation_spec(split, config.batch_size)
        self.eval_spec = self.activation_spec(split, config.eval_batch_size)
        self.last_trained: str | None = None

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        result = RoundResult(participants=[])
        for client in clients:
            try:
                await client.set_weights("bottom", self.bottom_state, round)
                summary = await serve_training(self.ctx, client, round, self.train_spec, self.top, self.optimizer)
                state, _ = await client.get_weights("bottom", round, expected=self.bottom_state)
            except ClientGone:
                result.dropped.append(client.client_id)
                continue
            self.bottom_state = state
            self.last_trained = client.client_id
            result.participants.append(client.client_id)
            result.per_client[client.client_id] = summary
        return result

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        latest_first = sorted(clients, key=lambda c: c.client_id != self.last_trained)
        return await evaluate_first_available(self.ctx, latest_first, round, self.eval_spec, self.bottom_state,
                                              self.top)

    def model_state(self):
        return {"bottom": self.bottom_state, "top": clone_state(self.top)}

    def state_dict(self) -> dict[str, Any]:
        return {"top": self.top.state_dict(), "optimizer": self.optimizer.state_dict(),
                "bottom": self.bottom_state, "last_trained": self.last_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bottom_state = dict(state["bottom"])
        self.last_trained = state.get("last_trained")


SPEC = register(ParadigmSpec(
    name="vanilla", server=VanillaServer, client=BottomClient, aliases=("vanilla",),
    summary="sequential ring; bottom weights handed on through the server; labels go to the server",
))
