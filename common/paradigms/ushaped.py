"""U-shaped split learning (Vepakomma et al. 2018, the "no label sharing" configuration).

Who holds what: every client holds the *head* of the model, the *tail* of the model and its labels; the
server holds the *middle*. The model is cut twice, at ``[split_layer, tail_layer]``: for the LeNet with
the default ``split_layer: 1`` and ``tail_layer: -1`` (= the last block) that is head = block 0 (conv1),
middle = blocks 1..2 (conv2 + flatten), tail = block 3 (the MLP). Labels and logits never leave a client.

Protocol: the U-shaped four-message exchange of ``kit.ushaped`` (head activations up, middle output down,
gradient of the middle output up, gradient of the head activations down; no labels ever leave a client).
Evaluation goes through the server the same way; the client scores its tail output against its own labels.

Schedules (option ``schedule``):
  * ``sequential`` (default, SLPerf ``Ushaped``): clients train one after another in index order. Before its
    turn a client receives the latest head and tail from the server; after it the server collects them and
    hands them to the next client, exactly like vanilla SL hands on the bottom. Evaluation runs through the
    client that trained last, with the handed-on head and tail.
  * ``parallel`` (SLPerf ``parallel_U_Shape``; also the alias ``ushaped_parallel``): all clients train at
    once; the server serialises the steps in arrival order (``SerialGate``). Each client keeps its *own*
    head and tail (no averaging: that is SLPerf's behaviour, and it keeps the point of the U shape, a model
    end that is the client's own). The server keeps a copy of every client's head and tail (sent at the start of a
    round, collected at the end) only so that a client that restarts, and a server that resumes from a
    checkpoint, continue from the right weights. Evaluation runs through every client on the test set; the
    reported accuracy is correct / samples pooled over clients, per-client accuracies go in the evaluation's
    ``extra["eval_accuracy"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from slperf.common.config import ConfigError, RunConfig
from slperf.common.data.registry import DATASETS
from slperf.common.paradigms.base import (
    ClientHandle,
    EvalResult,
    InferencePlan,
    NoClientLeft,
    ParadigmSpec,
    RoundResult,
    ServerContext,
    ServerParadigm,
)
from slperf.common.paradigms.kit.aggregate import pooled
from slperf.common.paradigms.kit.rounds import first_available, gather_round, latest_first, ring
from slperf.common.paradigms.kit.serving import SerialGate
from slperf.common.paradigms.kit.steps import clone_state, load_state, make_optimizer
from slperf.common.paradigms.kit.ushaped import (
    HEAD,
    TAIL,
    Ends,
    UShapedClient,
    build_ushaped,
    check_tail_layer,
    collect_ends,
    evaluate_ushaped,
    send_ends,
    serve_ushaped,
    ushaped_exchange,
)
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.exchange import Exchange
from slperf.common.protocol.types import PhaseSummary

SCHEDULES = ("sequential", "parallel")

DEVIATIONS = """\
* SLPerf's Ushaped never terminated (epoch counter incremented twice, a hard-coded 3 epochs); here a
  round is one pass of every client over its shard and epochs rounds are run.
* SLPerf's sequential Ushaped kept every client's head and tail private and only shared the middle; in
  the sequential schedule here the head and tail are handed on through the server like vanilla SL's
  bottom (the design's ring; Vepakomma et al. pass the client-side model on), so the ring trains *one*
  model. The parallel schedule keeps them per client, as SLPerf did.
* SLPerf's parallel_U_Shape crashed at the end of its first epoch and took the train/eval mode from
  the last *enqueued* message; here the mode comes from the phase being served.
* The cut is configurable: tail_layer (validated against the model) in addition to split_layer.
* A client that drops out (ClientGone) loses its turn (sequential) or its part of the round (parallel);
  the others go on and the round records it in RoundResult.dropped. A half-done step is discarded."""


# -- server half ------------------------------------------------------------------------------------------
class UShapedServer(ServerParadigm):
    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        split = self.split = build_ushaped(config, input_shape, num_classes)
        head, self.middle, tail = split.segments
        self.placement.module(self.middle)
        self.optimizer = make_optimizer(self.middle.parameters(), config)
        self.schedule = config.options.get("schedule", "sequential")
        # Sequential: the one head/tail handed round the ring. Parallel: one pair per client index.
        init = {HEAD: clone_state(head), TAIL: clone_state(tail)}
        copies = 1 if self.schedule == "sequential" else config.clients
        self.ends: list[Ends] = [
            {k: {n: t.clone() for n, t in v.items()} for k, v in init.items()} for _ in range(copies)
        ]
        self.last_trained: str | None = None
        self.gate = SerialGate()

    def _slot(self, client: ClientHandle) -> int:
        return 0 if self.schedule == "sequential" else client.index

    async def _client_turn(self, client: ClientHandle, round: int) -> PhaseSummary:
        """Head and tail down, the pass, head and tail back up (kept only once the whole turn succeeded)."""
        ends = self.ends[self._slot(client)]
        await send_ends(client, ends, round)
        summary = await serve_ushaped(self.ctx, client, round, self.middle, self.optimizer, self.gate)
        self.ends[self._slot(client)] = await collect_ends(client, ends, round)
        if self.schedule == "sequential":
            self.last_trained = client.client_id
        return summary

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        run = ring if self.schedule == "sequential" else gather_round
        return (await run(clients, lambda c: self._client_turn(c, round))).to_result()

    async def _evaluate_client(self, client: ClientHandle, round: int) -> EvalResult:
        await send_ends(client, self.ends[self._slot(client)], round)
        return await evaluate_ushaped(self.ctx, client, round, self.middle)

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        if self.schedule == "sequential":
            misbehaved: dict[str, str] = {}
            first = await first_available(
                latest_first(clients, self.last_trained),
                lambda c: self._evaluate_client(c, round),
                "evaluate through",
                misbehaved,
            )
            first.misbehaved.update(misbehaved)
            return first
        # Parallel: every client evaluates its own head and tail (concurrently; no gate needed without
        # gradients).
        outcome = await gather_round(clients, lambda c: self._evaluate_client(c, round))
        if not outcome.done:
            raise NoClientLeft("evaluate through")
        result = pooled([r for _, r in outcome.done])
        result.misbehaved.update(outcome.misbehaved)
        result.extra["eval_accuracy"] = {c.client_id: r.accuracy for c, r in outcome.done}
        return result

    def model_state(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {"middle": clone_state(self.middle)}
        if self.schedule == "sequential":
            out.update(self.ends[0])
        else:
            for index, ends in enumerate(self.ends):
                out.update({f"{segment}.{index}": state for segment, state in ends.items()})
        return out

    def describe(self) -> dict[str, Any]:
        return self.split.cut_facts()

    def inference_plan(self, clients: Sequence[ClientHandle]) -> InferencePlan:
        """The middle on the server; each client keeps the head and tail it was evaluated with (sequential: the
        ones handed round the ring; parallel: its own)."""
        ends = {c.client_id: dict(self.ends[self._slot(c)]) for c in clients}
        return InferencePlan(server={"middle": clone_state(self.middle)}, clients=ends)

    def state_dict(self) -> dict[str, Any]:
        return {
            "middle": self.middle.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ends": self.ends,
            "last_trained": self.last_trained,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_state(self.middle, state["middle"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ends = [{k: dict(v) for k, v in ends.items()} for ends in state["ends"]]
        self.last_trained = state.get("last_trained")


# -- registration -----------------------------------------------------------------------------------------
def _validate(options: dict[str, Any]) -> None:
    if options["schedule"] not in SCHEDULES:
        raise ConfigError(f"option 'schedule' must be one of {', '.join(SCHEDULES)}, got {options['schedule']!r}")
    check_tail_layer(options)


PARALLEL = {"schedule": "parallel"}


def _exchange(config: RunConfig, client_index: int) -> Exchange:
    dataset = DATASETS[config.dataset]
    return ushaped_exchange(config, dataset.input_shape, dataset.num_classes)


THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "the head's output, every training and evaluation batch of every client"),
        Exposure(Seen.TAIL_GRADIENTS, "d loss / d (middle output) from the client's tail, every training batch"),
        Exposure(
            Seen.CLIENT_WEIGHTS,
            "head and tail after every turn (sequential: to hand on; parallel: a copy kept for restarts)",
        ),
    ),
    client=(
        Exposure(Seen.SERVER_OUTPUT, "the middle's output, every training and evaluation batch"),
        Exposure(Seen.CUT_GRADIENTS, "d loss / d (head output), every training batch"),
        Exposure(Seen.WEIGHTS, "head and tail before its turn (sequential: the previous client's)"),
    ),
    producer="it sends every client the head (and tail) its turn starts from and collects them after",
    notes="labels never cross, but holding the tail the server can run it on its own output and get the "
    "client's logits: the labels are only as private as the tail's weights",
)


SPEC = register(
    ParadigmSpec(
        name="ushaped",
        server=UShapedServer,
        client=UShapedClient,
        exchange=_exchange,
        threats=THREATS,
        time_factor=1.6,
        aliases=("Ushaped", "u_shaped", "parallel_U_Shape", "ushaped_parallel"),
        alias_options={"ushaped_parallel": PARALLEL, "parallel_U_Shape": PARALLEL},
        options={"schedule": (str, "sequential"), "tail_layer": (int, -1)},
        validate=_validate,
        deviations=DEVIATIONS,
        summary="U-shaped: client holds head + tail + labels, server the middle; 4 messages per batch; labels "
        "never leave the client; sequential ring (default) or schedule: parallel (parallel_U_Shape, "
        "ushaped_parallel)",
    )
)
