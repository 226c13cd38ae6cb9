"""Server-side building blocks for paradigms where the server holds the top of the model and the loss:
serve one client's training pass against a top segment, and evaluate through one client."""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Mapping, Sequence

from torch import nn

from slperf.common.models import SplitModel, build_split
from slperf.common.paradigms.base import ActivationSpec, ClientGone, ClientHandle, EvalResult, ServerContext, ServerParadigm
from slperf.common.protocol.types import PhaseSummary, Reply
from slperf.common.paradigms.steps import top_eval_step, top_train_step


_forward_backward = functools.partial(top_train_step, step=False)


class TopHolder(ServerParadigm):
    """Base for paradigms with a bottom on each client and a top (or tops) on the server."""

    def build_split(self) -> SplitModel:
        cfg = self.config
        self.split = build_split(cfg.model, self.input_shape, self.num_classes, cfg.seed, [cfg.split_layer])
        return self.split

    def describe(self) -> dict[str, Any]:
        return self.split.cut_facts()

    def activation_spec(self, split: SplitModel, batch_size: int) -> ActivationSpec:
        return ActivationSpec(sample_shape=split.cut_shapes[0], labels=True, num_classes=self.num_classes,
                              max_batch=batch_size)


async def serve_training(ctx: ServerContext, client: ClientHandle, round: int, spec: ActivationSpec,
                         top: nn.Module, optimizer, options: Mapping[str, Any] | None = None) -> PhaseSummary:
    """One client's pass: for each batch, step the top and send the activation gradient back.

    The gradient leaves before the top's optimiser step: the step runs in the compute thread while the reply
    travels and the client runs its backward pass (the client needs only the gradient), and it is finished
    before the next batch is touched, so the arithmetic is exactly that of stepping first.
    """
    stream = client.train(round, spec, options)
    async for batch in stream:
        out = await ctx.compute(_forward_backward, top, optimizer, batch.tensor, batch.labels)
        stepping = asyncio.ensure_future(ctx.compute(optimizer.step))
        try:
            await client.reply(Reply(batch.ref, out.grad, out.loss, out.correct, out.count))
        finally:
            await stepping
    assert stream.summary is not None
    return stream.summary


async def evaluate_through(ctx: ServerContext, client: ClientHandle, round: int, spec: ActivationSpec,
                           top: nn.Module) -> EvalResult:
    """The client streams test-set activations (no reply per batch); the server scores them with its top."""
    correct = 0
    loss_sum = 0.0
    count = 0
    async for batch in client.evaluate(round, spec):
        out = await ctx.compute(top_eval_step, top, batch.tensor, batch.labels)
        correct += out.correct
        loss_sum += out.loss
        count += out.count
    return EvalResult(accuracy=correct / count if count else 0.0, loss=loss_sum / count if count else 0.0,
                      samples=count)


async def evaluate_first_available(ctx: ServerContext, clients: Sequence[ClientHandle], round: int,
                                   spec: ActivationSpec, bottom_state, top: nn.Module) -> EvalResult:
    """Evaluates the global bottom + top through the first client that answers (in the given order): it is
    handed the bottom first, so any client can do it and a dropped one is simply skipped."""
    for client in clients:
        try:
            await client.set_weights("bottom", bottom_state, round)
            return await evaluate_through(ctx, client, round, spec, top)
        except ClientGone:
            continue
    raise ClientGone("*", "no client left to evaluate through")
