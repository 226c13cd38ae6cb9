"""The U-shaped cut and its four-message exchange, server and client side (U-shaped SL, multi-task SL).

Who holds what: every client holds the *head* of the model, the *tail* and its labels; the server holds the
*middle*. The model is cut twice, at ``[split_layer, tail_layer]``. Labels and logits never leave a client.

One training step is 4 messages, two round trips; the two client->server messages of a step are the stages
"head" and "tail" of one ``PhaseStream``:
  1. up    (stage "head"): ``a1 = head(x)``, no labels (the transport refuses labels here).
  2. down  (reply to 1):   ``a2 = middle(a1)``, the forward output of the middle.
  3. up    (stage "tail"): ``g2 = d loss / d a2``, computed by the client from ``tail(a2)`` and its labels,
                           after it stepped its tail.
  4. down  (reply to 3):   ``g1 = d loss / d a1``; the server steps the middle with ``g2``, the client steps
                           its head with ``g1``.
The server holds the autograd graph of ``middle(a1)`` between 2 and 3, so it serves one step of one client
at a time: a ``Gate`` is held from message 1 to message 4 of a step.

Evaluation goes *through* the server: per test batch, head activations go up (stage "head") and the middle
output comes down; the client scores ``tail(a2)`` against its own labels and reports correct / samples /
summed loss in its PhaseSummary, which the server reads from ``stream.summary``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slperf.common.config import ConfigError, RunConfig
from slperf.common.devices import cut_to_host, module_device, to_device
from slperf.common.models import SplitModel, build_model, build_split
from slperf.common.paradigms.base import (
    ClientData,
    ClientGone,
    ClientHandle,
    ClientLink,
    ClientParadigm,
    EvalResult,
    ServerContext,
)
from slperf.common.paradigms.kit.cuts import cut_shapes, split_layouts
from slperf.common.paradigms.kit.optim import Optimizer
from slperf.common.paradigms.kit.serving import Gate, compute_or_refuse
from slperf.common.paradigms.kit.steps import (
    PoisonedStep,
    backward_from,
    bottom_backward_step,
    check_gradients,
    grad_of,
    make_optimizer,
)
from slperf.common.privacy.defenses.client import ClientDefenses
from slperf.common.protocol.exchange import Exchange, SegmentLayout, Stage, TensorSpec
from slperf.common.protocol.types import CutReply, Phase, PhaseSummary, State, StepRef

HEAD, TAIL = "head", "tail"
Ends = dict[str, State]  # a client's head and tail: {HEAD: state, TAIL: state}


# -- the model cut ---------------------------------------------------------------------------------------
def ushaped_cuts(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> list[int]:
    """``[split_layer, tail_layer]`` resolved against the model (``tail_layer: -1`` = the last block).

    Raises ConfigError naming the key when the cuts do not leave a non-empty head, middle and tail.
    """
    model = build_model(config.model, input_shape, num_classes, config.seed)
    blocks = len(model)
    tail = config.options.get("tail_layer", -1)
    tail = blocks - 1 if tail == -1 else tail
    if not 1 <= config.split_layer < blocks - 1:
        raise ConfigError(
            f"split_layer {config.split_layer} leaves no room for a middle and a tail: model "
            f"'{config.model}' has {blocks} blocks, so for U-shaped SL it must be 1..{blocks - 2}"
        )
    if not config.split_layer < tail < blocks:
        raise ConfigError(
            f"option 'tail_layer' is {tail}: it must be after split_layer ({config.split_layer}) "
            f"and before the end of model '{config.model}' ({blocks} blocks), i.e. "
            f"{config.split_layer + 1}..{blocks - 1}, or -1 for the last block"
        )
    trainable = [i for i, block in enumerate(model) if any(p.requires_grad for p in block.parameters())]
    for name, first, end in (
        ("head", 0, config.split_layer),
        ("middle", config.split_layer, tail),
        ("tail", tail, blocks),
    ):
        if not any(first <= i < end for i in trainable):
            raise ConfigError(
                f"split_layer {config.split_layer} and tail_layer {tail} leave the {name} (blocks {first}..{end - 1} "
                f"of model '{config.model}') without trainable parameters; the blocks with parameters are "
                f"{trainable}, and each of head, middle and tail needs at least one"
            )
    return [config.split_layer, tail]


def build_ushaped(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> SplitModel:
    """Every party builds the whole model from the seed and keeps its segments: [head, middle, tail]."""
    cuts = ushaped_cuts(config, input_shape, num_classes)
    return build_split(config.model, input_shape, num_classes, config.seed, cuts)


def ushaped_exchange(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> Exchange:
    """The four messages of a U-shaped step, and the two of an evaluation step; labels never leave the client.

    train  head: up the head's activations a1, down the middle's output a2
           tail: up the gradient of the loss at a2, down the gradient at a1
    eval   head: up a1, down a2 (the client scores the tail's output against its own labels)
    """
    split = (
        config.model,
        tuple(input_shape),
        num_classes,
        config.seed,
        tuple(ushaped_cuts(config, input_shape, num_classes)),
    )
    cut1, cut2 = (TensorSpec(shape) for shape in cut_shapes(*split))
    head_layout, _, tail_layout = split_layouts(*split)
    head = Stage(up=cut1, down=cut2, name=HEAD)
    return Exchange(
        train=(head, Stage(up=cut2, down=cut1, name=TAIL)),
        eval=(head,),
        num_classes=num_classes,
        max_batch=config.batch_size,
        max_eval_batch=config.eval_batch_size,
        segments=(SegmentLayout(HEAD, head_layout), SegmentLayout(TAIL, tail_layout)),
    )


def check_tail_layer(options: Mapping[str, Any]) -> None:
    """The option ``tail_layer`` of a U-shaped paradigm, before the model is known."""
    tail = options["tail_layer"]
    if tail != -1 and tail < 2:
        raise ConfigError(f"option 'tail_layer' must be -1 (the last block) or a block index >= 2, got {tail}")


# -- server side ---------------------------------------------------------------------------------------
def middle_forward(middle: nn.Module, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training forward: keeps the graph of ``middle(a1)`` (on the middle's device) for the backward at the tail
    stage; returns a1, a2 and a2 for the wire (host, float32)."""
    middle.train()
    a1 = to_device(acts, module_device(middle)).detach().requires_grad_(True)
    a2 = middle(a1)
    if not bool(torch.isfinite(a2.detach()).all()):
        raise PoisonedStep("refused the step: the middle's output is non-finite")
    return a1, a2, cut_to_host(a2.detach())


def middle_backward(
    middle: nn.Module, optimizer: Optimizer, a1: torch.Tensor, a2: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """Back-propagates the client's gradient of the middle output, steps the middle, returns d/d a1. A step whose
    gradients are not finite or implausibly large is refused before the optimiser moves (``PoisonedStep``)."""
    optimizer.zero_grad(set_to_none=True)
    backward_from(a2, to_device(grad, a2.device))
    check_gradients(middle, a1.grad)
    optimizer.step()
    return cut_to_host(grad_of(a1))


@torch.no_grad()
def middle_eval(middle: nn.Module, acts: torch.Tensor) -> torch.Tensor:
    middle.eval()
    out: torch.Tensor = middle(to_device(acts, module_device(middle)))
    if not bool(torch.isfinite(out).all()):
        raise PoisonedStep("refused the evaluation batch: the middle's output is non-finite")
    return cut_to_host(out)


async def send_ends(client: ClientHandle, ends: Mapping[str, State], round: int) -> None:
    """Hands the client its head and tail for the round."""
    for segment in (HEAD, TAIL):
        await client.set_weights(segment, ends[segment], round)


async def collect_ends(client: ClientHandle, ends: Mapping[str, State], round: int) -> Ends:
    """The client's head and tail after its pass (checked against the shapes of ``ends``)."""
    new: Ends = {}
    for segment in (HEAD, TAIL):
        new[segment], _ = await client.get_weights(segment, round, expected=ends[segment])
    return new


async def serve_ushaped(
    ctx: ServerContext,
    client: ClientHandle,
    round: int,
    middle: nn.Module,
    optimizer: Optimizer,
    gate: Gate,
) -> PhaseSummary:
    """One client's training pass: the 4-message exchange per step, holding ``gate`` from head to tail."""
    stream = client.train(round)
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    held = False
    try:
        async for batch in stream:
            if batch.ref.stage == HEAD:
                await gate.acquire(client.client_id)
                held = True
                a1, a2, a2_wire = await compute_or_refuse(ctx, client, batch, middle_forward, middle, batch.tensor)
                pending = (a1, a2)
                await client.reply(CutReply(batch.ref, a2_wire, count=int(a2.shape[0])))
            else:
                assert pending is not None  # the stream yields a step's stages in order
                a1, a2 = pending
                pending = None
                if tuple(batch.tensor.shape) != tuple(a2.shape):
                    raise ClientGone(
                        client.client_id,
                        f"tail gradient of shape {list(batch.tensor.shape)} for a "
                        f"middle output of shape {list(a2.shape)}",
                    )
                args = (middle, optimizer, a1, a2, batch.tensor)
                g1 = await compute_or_refuse(ctx, client, batch, middle_backward, *args)
                held = False
                gate.release(client.client_id)
                await client.reply(CutReply(batch.ref, g1, count=int(g1.shape[0])))
    finally:
        if held:
            gate.release(client.client_id)
        gate.leave(client.client_id)
    assert stream.summary is not None
    return stream.summary


async def evaluate_ushaped(ctx: ServerContext, client: ClientHandle, round: int, middle: nn.Module) -> EvalResult:
    """The client streams head activations of the test set; the server answers each with the middle output;
    the client scores its tail output against its own labels and reports the figures in its summary."""
    stream = client.evaluate(round)
    async for batch in stream:
        a2 = await compute_or_refuse(ctx, client, batch, middle_eval, middle, batch.tensor)
        await client.reply(CutReply(batch.ref, a2, count=int(a2.shape[0])))
    summary = stream.summary
    assert summary is not None
    samples = summary.samples
    return EvalResult(
        accuracy=summary.correct / samples if samples else 0.0,
        loss=summary.loss_sum / samples if samples else 0.0,
        samples=samples,
    )


# -- client side ---------------------------------------------------------------------------------------
class UShapedClient(ClientParadigm):
    """Holds the head, the tail and the labels; computes the loss and every accuracy figure itself."""

    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        super().__init__(config, index, num_clients, data)
        split = build_ushaped(config, data.input_shape, data.num_classes)
        self.head, _, self.tail = (self.placement.module(s) for s in split.segments)
        self.segments = {HEAD: self.head, TAIL: self.tail}
        self.head_optimizer = make_optimizer(self.head.parameters(), config)
        self.tail_optimizer = make_optimizer(self.tail.parameters(), config)
        self.defenses = ClientDefenses(config, data.train, data.num_classes)  # ``defenses:``; none: a no-op

    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary:
        self.head.train()
        self.tail.train()
        place = self.placement
        summary = PhaseSummary()
        for step, (x, y) in enumerate(self.data.train.batches(round)):
            head_ref = StepRef(link.run_id, round, step, Phase.TRAIN, HEAD)
            tail_ref = StepRef(link.run_id, round, step, Phase.TRAIN, TAIL)
            inputs = place.inbound(x)
            with place.autocast():
                a1 = self.head(inputs)
            out = self.defenses.release(inputs, a1, y, round, step)  # the labels stay here: only a1 is used
            a1 = out.activations
            await link.send_cut_tensor(head_ref, cut_to_host(a1.detach()))  # 1: no labels
            down = await link.recv_reply(head_ref)  # 2
            if down.tensor is None:
                raise ValueError(f"step {step}: the server sent no middle output")
            a2 = place.inbound(down.tensor).detach().requires_grad_(True)
            labels = place.inbound(y)
            with place.autocast():
                logits = self.tail(a2)
                loss = F.cross_entropy(logits, labels)
            self.tail_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.tail_optimizer.step()
            await link.send_cut_tensor(tail_ref, cut_to_host(self.defenses.gradient(grad_of(a2))))  # 3
            up = await link.recv_reply(tail_ref)  # 4
            if up.tensor is None:
                raise ValueError(f"step {step}: the server sent no gradient for the head")
            bottom_backward_step(a1, up.tensor, self.head_optimizer, out.penalty)
            summary.add(int(y.shape[0]), float(loss.detach()), int((logits.detach().argmax(1) == labels).sum()))
        return summary

    async def evaluate(self, link: ClientLink, round: int) -> PhaseSummary:
        """Scores the test set through the server; ``loss_sum`` is summed per sample (the server divides)."""
        self.head.eval()
        self.tail.eval()
        place = self.placement
        summary = PhaseSummary()
        for step, (x, y) in enumerate(self.data.test.batches(0, shuffle=False)):
            ref = StepRef(link.run_id, round, step, Phase.EVAL, HEAD)
            with torch.no_grad(), place.autocast():
                a1 = self.defenses.release_eval(self.head(place.inbound(x)))
            await link.send_cut_tensor(ref, cut_to_host(a1))
            down = await link.recv_reply(ref)
            if down.tensor is None:
                raise ValueError(f"eval step {step}: the server sent no middle output")
            with torch.no_grad(), place.autocast():
                logits = self.tail(place.inbound(down.tensor))
                labels = place.inbound(y)
                summary.add(
                    int(y.shape[0]),
                    float(F.cross_entropy(logits, labels, reduction="sum")),
                    int((logits.argmax(1) == labels).sum()),
                )
        return summary
