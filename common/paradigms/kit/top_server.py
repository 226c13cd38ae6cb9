"""The server half's base for paradigms with a bottom on each client and the top (and the loss) on the
server: the split, and the exchange every such paradigm declares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slperf.common.config import RunConfig
from slperf.common.data.registry import DATASETS
from slperf.common.models import build_split
from slperf.common.paradigms.base import ClientHandle, EvalResult, InferencePlan, ServerContext, ServerParadigm
from slperf.common.paradigms.kit.cuts import cut_shapes, split_layouts
from slperf.common.paradigms.kit.rounds import latest_first
from slperf.common.paradigms.kit.serving import (
    collect_own_bottom,
    evaluate_every_client,
    evaluate_first_available,
    send_own_bottom,
)
from slperf.common.paradigms.kit.steps import clone_state, make_optimizer
from slperf.common.protocol.exchange import Exchange, SegmentLayout, Stage, TensorSpec
from slperf.common.protocol.types import State


def top_exchange(config: RunConfig, client_index: int = 0, *, gradient_optional: bool = False) -> Exchange:
    """The exchange of every paradigm whose server holds the top and the loss (the same for every client).

    train  up the bottom's activations with the labels, down the gradient at the cut (which the server may
           withhold where ``gradient_optional``: async SL's frozen state) with the batch's loss and accuracy
    eval   up the activations with the labels; no reply (the server scores them)
    """
    dataset = DATASETS[config.dataset]
    (cut,) = cut_shapes(
        config.model, tuple(dataset.input_shape), dataset.num_classes, config.seed, (config.split_layer,)
    )
    bottom, _ = split_layouts(
        config.model, tuple(dataset.input_shape), dataset.num_classes, config.seed, (config.split_layer,)
    )
    acts = TensorSpec(cut)
    return Exchange(
        train=(Stage(up=acts, down=acts, labels=True, down_optional=gradient_optional),),
        eval=(Stage(up=acts, labels=True),),
        num_classes=dataset.num_classes,
        max_batch=config.batch_size,
        max_eval_batch=config.eval_batch_size,
        segments=(SegmentLayout("bottom", bottom),),
    )


class TopSegmentServer(ServerParadigm):
    """Builds the two-segment split at ``split_layer`` (``self.split``: bottom, top) with the top on the server's
    device (before any optimiser is built on it); the subclass decides how many tops it keeps and how it steps
    them. The bottom stays on the host: the server only keeps and sends its state."""

    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.split = build_split(config.model, input_shape, num_classes, config.seed, [config.split_layer])
        self.placement.module(self.split.segments[1])

    def describe(self) -> dict[str, Any]:
        return self.split.cut_facts()

    def inference_plan(self, clients: Sequence[ClientHandle]) -> InferencePlan:
        """The top, and for each client the bottom the final evaluation used for it: the one bottom every client
        shares (``model_state``'s ``bottom``: handed on, or averaged), else the client's own (``bottom/<id>``),
        else the initial one for a client that never trained."""
        state = self.model_state()
        initial = clone_state(self.split.segments[0])
        own = {c.client_id: state.get(f"bottom/{c.client_id}", state.get("bottom", initial)) for c in clients}
        return InferencePlan(server={"top": state["top"]}, clients={cid: {"bottom": b} for cid, b in own.items()})


class SharedTopServer(TopSegmentServer):
    """One top shared by every client, and each client's own bottom kept on the server between rounds
    (never averaged; PSL, SGLR). The subclass decides how the top serves a round; evaluation goes through
    every client with its own bottom, pooled, with each client's accuracy in the evaluation's ``extra``."""

    def __init__(
        self,
        config: RunConfig,
        ctx: ServerContext,
        num_classes: int,
        input_shape: tuple[int, ...],
        server_lr: float | None = None,
    ):
        super().__init__(config, ctx, num_classes, input_shape)
        self.top = self.split.segments[1]
        self.optimizer = make_optimizer(self.top.parameters(), config, lr=server_lr)
        self.init_bottom = clone_state(self.split.segments[0])
        self.bottoms: dict[str, State] = {}

    # Each client's own bottom goes down before its pass and comes back after it.
    async def push_bottom(self, client: ClientHandle, round: int) -> None:
        await send_own_bottom(client, self.bottoms, self.init_bottom, round)

    async def pull_bottom(self, client: ClientHandle, round: int) -> None:
        await collect_own_bottom(client, self.bottoms, self.init_bottom, round)

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        result, per_client = await evaluate_every_client(
            self.ctx, round, clients, self.top, push=lambda c: self.push_bottom(c, round)
        )
        result.extra["test_accuracy_per_client"] = per_client
        return result

    def model_state(self) -> dict[str, State]:
        out = {"top": clone_state(self.top)}
        for cid, state in sorted(self.bottoms.items()):
            out[f"bottom/{cid}"] = state
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"top": self.top.state_dict(), "optimizer": self.optimizer.state_dict(), "bottoms": self.bottoms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bottoms = {cid: dict(s) for cid, s in state["bottoms"].items()}


class HandedOnBottomServer(TopSegmentServer):
    """One top, and one bottom handed from client to client through the server (a ring: vanilla, AsyncSL).
    Evaluation goes through the client that trained last (else any that answers) with the current bottom.
    The subclass runs the turns and sets ``bottom_state`` and ``last_trained`` after each."""

    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.top = self.split.segments[1]
        self.optimizer = make_optimizer(self.top.parameters(), config)
        self.bottom_state = clone_state(self.split.segments[0])
        self.last_trained: str | None = None

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        return await evaluate_first_available(
            self.ctx, latest_first(clients, self.last_trained), round, self.bottom_state, self.top
        )

    def model_state(self) -> dict[str, State]:
        return {"bottom": self.bottom_state, "top": clone_state(self.top)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "top": self.top.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "bottom": self.bottom_state,
            "last_trained": self.last_trained,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bottom_state = dict(state["bottom"])
        self.last_trained = state.get("last_trained")
