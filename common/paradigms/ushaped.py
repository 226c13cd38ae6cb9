"""U-shaped split learning (Vepakomma et al. 2018, the "no label sharing" configuration).

Who holds what: every client holds the *head* of the model, the *tail* of the model and its labels; the
server holds the *middle*. The model is cut twice, at ``[split_layer, tail_layer]``: for the LeNet with
the default ``split_layer: 1`` and ``tail_layer: -1`` (= the last block) that is head = block 0 (conv1),
middle = blocks 1..2 (conv2 + flatten), tail = block 3 (the MLP). Labels and logits never leave a client.

Protocol of one training step (4 messages, two round trips; the two client->server messages of a step are
the stages "head" and "tail" of one ``PhaseStream``):
  1. up    (stage "head"): ``a1 = head(x)``, no labels (the transport refuses labels here with
                           PERMISSION_DENIED).
  2. down  (reply to 1):   ``a2 = middle(a1)``, the forward output of the middle.
  3. up    (stage "tail"): ``g2 = d loss / d a2``, computed by the client from ``tail(a2)`` and its labels,
                           after it stepped its tail.
  4. down  (reply to 3):   ``g1 = d loss / d a1``; the server steps the middle with ``g2``, the client steps
                           its head with ``g1``.
The server holds the autograd graph of ``middle(a1)`` between 2 and 3, so it serves one step of one client
at a time: in parallel mode a FIFO lock is held from message 1 to message 4 of a step (SLPerf's busy flag
and queue), and other clients' head activations wait for it.

Evaluation: the client evaluates *through* the server: per test batch, head activations go up (stage
"head", no labels) and the middle output comes down; the client scores ``tail(a2)`` against its own
labels and reports correct / samples / summed loss in its PhaseSummary, which the server reads from
``stream.summary``.

Schedules (option ``schedule``):
  * ``sequential`` (default, SLPerf ``Ushaped``): clients train one after another in index order. Before its
    turn a client receives the latest head and tail from the server; after it the server collects them and
    hands them to the next client, exactly like vanilla SL hands on the bottom. Evaluation runs through the
    client that trained last, with the handed-on head and tail.
  * ``parallel`` (SLPerf ``parallel_U_Shape``, also registered as paradigm ``ushaped_parallel``): all clients
    train at once; the server serialises the steps (FIFO lock above). Each client keeps its *own* head and
    tail (no averaging: that is SLPerf's behaviour, and it keeps the point of the U shape, a model end that
    is the client's own). The server keeps a copy of every client's head and tail (sent at the start of a
    round, collected at the end) only so that a client that restarts, and a server that resumes from a
    checkpoint, continue from the right weights. Evaluation runs through every client on the test set; the
    reported accuracy is correct / samples pooled over clients, per-client figures go in the round's extra.

Deliberate deviations from SLPerf's code (follow the paper, fix the bugs):
  * SLPerf's ``Ushaped`` never terminated (epoch counter incremented twice, a hard-coded 3 epochs); here a
    round is one pass of every client over its shard and ``epochs`` rounds are run.
  * SLPerf's sequential ``Ushaped`` kept every client's head and tail private and only shared the middle; in
    the sequential schedule here the head and tail are handed on through the server like vanilla SL's
    bottom (the design's ring; Vepakomma et al. pass the client-side model on), so the ring trains *one*
    model. The parallel schedule keeps them per client, as SLPerf did.
  * SLPerf's ``parallel_U_Shape`` crashed at the end of its first epoch and took the train/eval mode from
    the last *enqueued* message; here the mode comes from the phase being served.
  * The cut is configurable: ``tail_layer`` (validated against the model) in addition to ``split_layer``.
  * A client that drops out (ClientGone) loses its turn (sequential) or its part of the round (parallel);
    the others go on and the round records it in ``RoundResult.dropped``. A half-done step is discarded.
"""
from __future__ import annotations

import asyncio
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slperf.common.config import ConfigError, RunConfig
from slperf.common.models import SplitModel, build_model, build_split
from slperf.common.paradigms.base import ActivationSpec, ClientData, ClientGone, ClientHandle, ClientLink, ClientParadigm, EvalResult, ParadigmSpec, RoundResult, ServerContext, ServerParadigm
from slperf.common.protocol.types import Phase, PhaseSummary, Reply, StepRef
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.steps import bottom_backward_step, clone_state, load_state, make_optimizer

SCHEDULES = ("sequential", "parallel")
HEAD, TAIL = "head", "tail"


# -- the model cut ---------------------------------------------------------------------------------------
def ushaped_cuts(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> list[int]:
    """``[split_layer, tail_layer]`` resolved against the model (``tail_layer: -1`` = the last block).

    Raises ConfigError naming the key when the cuts do not leave a non-empty head, middle and tail.
    """
    blocks = len(build_model(config.model, input_shape, num_classes, config.seed))
    tail = config.options.get("tail_layer", -1)
    tail = blocks - 1 if tail == -1 else tail
    if not 1 <= config.split_layer < blocks - 1:
        raise ConfigError(f"split_layer {config.split_layer} leaves no room for a middle and a tail: model "
                          f"'{config.model}' has {blocks} blocks, so for U-shaped SL it must be 1..{blocks - 2}")
    if not config.split_layer < tail < blocks:
        raise ConfigError(f"option 'tail_layer' is {tail}: it must be after split_layer ({config.split_layer}) "
                          f"and before the end of model '{config.model}' ({blocks} blocks), i.e. "
                          f"{config.split_layer + 1}..{blocks - 1}, or -1 for the last block")
    return [config.split_layer, tail]


def build_ushaped(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> SplitModel:
    """Every party builds the whole model from the seed and keeps its segments: [head, middle, tail]."""
    cuts = ushaped_cuts(config, input_shape, num_classes)
    return build_split(config.model, input_shape, num_classes, config.seed, cuts)


def stage_specs(split: SplitModel, num_classes: int, batch_size: int) -> list[ActivationSpec]:
    """What a training step's two client->server messages look like, in arrival order; never labels."""
    return [
        ActivationSpec(sample_shape=split.cut_shapes[0], labels=False, num_classes=num_classes,
                       max_batch=batch_size, stage=HEAD),
        ActivationSpec(sample_shape=split.cut_shapes[1], labels=False, num_classes=num_classes,
                       max_batch=batch_size, stage=TAIL),
    ]


# -- server compute (run through ctx.compute, off the event loop) -----------------------------------------
def middle_forward(middle: nn.Module, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training forward: keeps the graph of ``middle(a1)`` for the backward at the tail stage."""
    middle.train()
    a1 = acts.detach().requires_grad_(True)
    return a1, middle(a1)


def middle_backward(middle: nn.Module, optimizer: torch.optim.Optimizer, a1: torch.Tensor, a2: torch.Tensor,
                    grad: torch.Tensor) -> torch.Tensor:
    """Back-propagates the client's gradient of the middle output, steps the middle, returns d/d a1."""
    optimizer.zero_grad(set_to_none=True)
    a2.backward(grad)
    optimizer.step()
    return a1.grad


@torch.no_grad()
def middle_eval(middle: nn.Module, acts: torch.Tensor) -> torch.Tensor:
    middle.eval()
    return middle(acts)


class SerialGate:
    """Serialises the server's steps across clients in arrival order (an asyncio.Lock is FIFO-fair)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def acquire(self, client_id: str) -> None:
        await self._lock.acquire()

    def release(self, client_id: str) -> None:
        self._lock.release()

    def leave(self, client_id: str) -> None:
        pass


async def send_ends(client: ClientHandle, ends: Mapping[str, Any], round: int) -> None:
    """Hands the client its head and tail for the round."""
    for segment in (HEAD, TAIL):
        await client.set_weights(segment, ends[segment], round)


async def collect_ends(client: ClientHandle, ends: Mapping[str, Any], round: int) -> dict[str, Any]:
    """The client's head and tail after its pass (checked against the shapes of ``ends``)."""
    new = {}
    for segment in (HEAD, TAIL):
        new[segment], _ = await client.get_weights(segment, round, expected=ends[segment])
    return new


async def serve_ushaped(ctx: ServerContext, client: ClientHandle, round: int, specs: Sequence[ActivationSpec],
                        middle: nn.Module, optimizer: torch.optim.Optimizer, gate) -> PhaseSummary:
    """One client's training pass: the 4-message exchange per step, holding ``gate`` from head to tail."""
    stream = client.train(round, specs)
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    held = False
    try:
        async for batch in stream:
            if batch.ref.stage == HEAD:
                await gate.acquire(client.client_id)
                held = True
                a1, a2 = await ctx.compute(middle_forward, middle, batch.tensor)
                pending = (a1, a2)
                await client.reply(Reply(batch.ref, a2.detach(), count=int(a2.shape[0])))
            else:
                assert pending is not None  # the stream yields a step's stages in order
                a1, a2 = pending
                pending = None
                if tuple(batch.tensor.shape) != tuple(a2.shape):
                    raise ClientGone(client.client_id, f"tail gradient of shape {list(batch.tensor.shape)} for a "
                                                       f"middle output of shape {list(a2.shape)}")
                g1 = await ctx.compute(middle_backward, middle, optimizer, a1, a2, batch.tensor)
                held = False
                gate.release(client.client_id)
                await client.reply(Reply(batch.ref, g1, count=int(g1.shape[0])))
    finally:
        if held:
            gate.release(client.client_id)
        gate.leave(client.client_id)
    assert stream.summary is not None
    return stream.summary


async def evaluate_ushaped(ctx: ServerContext, client: ClientHandle, round: int, spec: ActivationSpec,
                           middle: nn.Module) -> EvalResult:
    """The client streams head activations of the test set; the server answers each with the middle output;
    the client scores its tail output against its own labels and reports the figures in its summary."""
    stream = client.evaluate(round, spec)
    async for batch in stream:
        a2 = await ctx.compute(middle_eval, middle, batch.tensor)
        await client.reply(Reply(batch.ref, a2, count=int(a2.shape[0])))
    summary = stream.summary
    assert summary is not None
    samples = summary.samples
    return EvalResult(accuracy=summary.correct / samples if samples else 0.0,
                      loss=summary.loss_sum / samples if samples else 0.0, samples=samples)


def pooled(results: Sequence[EvalResult]) -> EvalResult:
    samples = sum(r.samples for r in results)
    if not samples:
        return EvalResult(0.0, 0.0, 0)
    return EvalResult(accuracy=sum(r.accuracy * r.samples for r in results) / samples,
                      loss=sum(r.loss * r.samples for r in results) / samples, samples=samples)


# -- server half ------------------------------------------------------------------------------------------
class UShapedServer(ServerParadigm):
    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        split = self.split = build_ushaped(config, input_shape, num_classes)
        head, self.middle, tail = split.segments
        self.optimizer = make_optimizer(self.middle.parameters(), config)
        self.schedule = config.options.get("schedule", "sequential")
        self.train_specs = stage_specs(split, num_classes, config.batch_size)
        self.eval_spec = stage_specs(split, num_classes, config.eval_batch_size)[0]
        # Sequential: the one head/tail handed round the ring. Parallel: one pair per client index.
        init = {HEAD: clone_state(head), TAIL: clone_state(tail)}
        copies = 1 if self.schedule == "sequential" else config.clients
        self.ends: list[dict[str, dict[str, torch.Tensor]]] = [
            {k: {n: t.clone() for n, t in v.items()} for k, v in init.items()} for _ in range(copies)]
        self.last_trained: str | None = None
        self.gate = SerialGate()
        self._round_extra: dict[str, Any] = {}

    def _ends(self, client: ClientHandle) -> dict[str, dict[str, torch.Tensor]]:
        return self.ends[0] if self.schedule == "sequential" else self.ends[client.index]

    async def _client_turn(self, client: ClientHandle, round: int) -> tuple[PhaseSummary, dict[str, Any]]:
        ends = self._ends(client)
        await send_ends(client, ends, round)
        summary = await serve_ushaped(self.ctx, client, round, self.train_specs, self.middle, self.optimizer,
                                      self.gate)
        return summary, await collect_ends(client, ends, round)

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        result = RoundResult(participants=[])
        self._round_extra = result.extra
        if self.schedule == "sequential":
            for client in clients:
                try:
                    summary, new = await self._client_turn(client, round)
                except ClientGone:
                    result.dropped.append(client.client_id)
                    continue
                self.ends[0] = new
                self.last_trained = client.client_id
                result.participants.append(client.client_id)
                result.per_client[client.client_id] = summary
            return result
        outcomes = await asyncio.gather(*(self._client_turn(c, round) for c in clients), return_exceptions=True)
        for client, outcome in zip(clients, outcomes):
            if isinstance(outcome, ClientGone):
                result.dropped.append(client.client_id)
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            summary, new = outcome
            self.ends[client.index] = new
            result.participants.append(client.client_id)
            result.per_client[client.client_id] = summary
        return result

    async def _evaluate_client(self, client: ClientHandle, round: int) -> EvalResult:
        ends = self._ends(client)
        await send_ends(client, ends, round)
        return await evaluate_ushaped(self.ctx, client, round, self.eval_spec, self.middle)

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        if self.schedule == "sequential":
            ordered = sorted(clients, key=lambda c: c.client_id != self.last_trained)
            for client in ordered:
                try:
                    return await self._evaluate_client(client, round)
                except ClientGone:
                    continue
            raise ClientGone("*", "no client left to evaluate through")
        # Parallel: every client evaluates its own head and tail (concurrently; no gate needed without
        # gradients). The per-client figures go in the round's extra (the record is written after this).
        outcomes = await asyncio.gather(*(self._evaluate_client(c, round) for c in clients), return_exceptions=True)
        results: dict[str, EvalResult] = {}
        for client, outcome in zip(clients, outcomes):
            if isinstance(outcome, ClientGone):
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            results[client.client_id] = outcome
        if not results:
            raise ClientGone("*", "no client left to evaluate through")
        self._round_extra["eval_accuracy"] = {cid: r.accuracy for cid, r in results.items()}
        return pooled(list(results.values()))

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

    def state_dict(self) -> dict[str, Any]:
        return {"middle": self.middle.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ends": self.ends, "last_trained": self.last_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_state(self.middle, state["middle"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ends = [{k: dict(v) for k, v in ends.items()} for ends in state["ends"]]
        self.last_trained = state.get("last_trained")


# -- client half ------------------------------------------------------------------------------------------
class UShapedClient(ClientParadigm):
    """Holds the head, the tail and the labels; computes the loss and every accuracy figure itself."""

    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        super().__init__(config, index, num_clients, data)
        split = build_ushaped(config, data.input_shape, data.num_classes)
        self.head, _, self.tail = split.segments
        self.middle_shape = split.cut_shapes[1]
        self.segments = {HEAD: self.head, TAIL: self.tail}
        self.head_optimizer = make_optimizer(self.head.parameters(), config)
        self.tail_optimizer = make_optimizer(self.tail.parameters(), config)

    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary:
        self.head.train()
        self.tail.train()
        summary = PhaseSummary()
        for step, (x, y) in enumerate(self.data.train.batches(round)):
            head_ref = StepRef(link.run_id, round, step, Phase.TRAIN, HEAD)
            tail_ref = StepRef(link.run_id, round, step, Phase.TRAIN, TAIL)
            a1 = self.head(x)
            await link.send_activations(head_ref, a1.detach())  # 1: no labels
            down = await link.recv_reply(head_ref, shape=(x.shape[0], *self.middle_shape))  # 2
            if down.tensor is None:
                raise ValueError(f"step {step}: the server sent no middle output")
            a2 = down.tensor.detach().requires_grad_(True)
            logits = self.tail(a2)
            loss = F.cross_entropy(logits, y)
            self.tail_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.tail_optimizer.step()
            await link.send_activations(tail_ref, a2.grad)  # 3
            up = await link.recv_reply(tail_ref, shape=tuple(a1.shape))  # 4
            if up.tensor is None:
                raise ValueError(f"step {step}: the server sent no gradient for the head")
            bottom_backward_step(a1, up.tensor, self.head_optimizer)
            summary.samples += int(y.shape[0])
            summary.steps += 1
            summary.loss_sum += float(loss.detach())
            summary.correct += int((logits.detach().argmax(1) == y).sum())
        return summary

    async def evaluate(self, link: ClientLink, round: int) -> PhaseSummary:
        """Scores the test set through the server; ``loss_sum`` is summed per sample (the server divides)."""
        self.head.eval()
        self.tail.eval()
        summary = PhaseSummary()
        for step, (x, y) in enumerate(self.data.test.batches(0, shuffle=False)):
            ref = StepRef(link.run_id, round, step, Phase.EVAL, HEAD)
            with torch.no_grad():
                a1 = self.head(x)
            await link.send_activations(ref, a1)
            down = await link.recv_reply(ref, shape=(x.shape[0], *self.middle_shape))
            if down.tensor is None:
                raise ValueError(f"eval step {step}: the server sent no middle output")
            with torch.no_grad():
                logits = self.tail(down.tensor)
                summary.loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                summary.correct += int((logits.argmax(1) == y).sum())
            summary.samples += int(y.shape[0])
            summary.steps += 1
        return summary


# -- registration -----------------------------------------------------------------------------------------
def _validate(options: dict[str, Any], *, schedule: str | None = None) -> None:
    if options["schedule"] not in SCHEDULES:
        raise ConfigError(f"option 'schedule' must be one of {', '.join(SCHEDULES)}, got {options['schedule']!r}")
    if schedule is not None and options["schedule"] != schedule:
        raise ConfigError(f"paradigm 'ushaped_parallel' is U-shaped SL with schedule: parallel; "
                          f"use paradigm 'ushaped' for schedule: {options['schedule']}")
    tail = options["tail_layer"]
    if tail != -1 and tail < 2:
        raise ConfigError(f"option 'tail_layer' must be -1 (the last block) or a block index >= 2, got {tail}")


SPEC = register(ParadigmSpec(
    name="ushaped", server=UShapedServer, client=UShapedClient, aliases=("Ushaped", "u_shaped"), time_factor=1.6,
    options={"schedule": (str, "sequential"), "tail_layer": (int, -1)},
    validate=_validate,
    summary="U-shaped: client holds head + tail + labels, server the middle; 4 messages per batch; labels "
            "never leave the client; sequential ring (default) or schedule: parallel",
))

# SLPerf's ``parallel_U_Shape`` is the same paradigm with ``schedule: parallel``. The registry maps an alias to
# a name only (it cannot imply an option), so the parallel form is registered under its own name too.
PARALLEL_SPEC = register(ParadigmSpec(
    name="ushaped_parallel", server=UShapedServer, client=UShapedClient, aliases=("parallel_U_Shape",), time_factor=1.6,
    options={"schedule": (str, "parallel"), "tail_layer": (int, -1)},
    validate=lambda options: _validate(options, schedule="parallel"),
    summary="U-shaped SL with schedule: parallel (SLPerf parallel_U_Shape)",
))
