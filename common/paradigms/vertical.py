"""Vertical split learning (Vepakomma et al. 2018; Ceballos et al. 2020).

Every client holds *different feature columns of the same samples*; one client (``label_owner``) also
holds the labels; the server holds the top of the model.

Protocol, per round (lock-step per batch):
  1. Every client visits the same rows in the same order (the order depends on the seed and the round, not
     on the client), runs its own bottom on its own columns and sends the embedding with the batch's sample
     ids; only the label owner attaches the labels.
  2. The server waits for step s from every client, checks that all sent the same sample ids (alignment),
     concatenates the embeddings in client order, runs the top, takes one SGD step, and returns to each
     client its slice of the gradient (split by embedding width, ``cut_layer_vertical_list``).
  3. Evaluation runs the same way over the test rows, without gradients; the server scores.

A party whose embedding poisons the server's step (huge finite activations: a non-finite or implausible loss or
gradient, ``kit.steps``) is found by scoring each party's embedding alone (the others' replaced by zeros), told
why, dropped from the round as misbehaved and replaced by zeros, as a party that drops out is; the step is taken
again without it, and nothing of the refused one is applied. In evaluation it is recorded in the evaluation's
``misbehaved`` and the rest of its pass is read and ignored. The label owner cannot be replaced (no labels, no
step): its poisoned batch fails the run with a reason naming it, and so does a step that only the parties
together poison (no one party to drop): never a NaN top, a checkpointed poison or a "finished" run on garbage.

Keys as in SLPerf: ``data_vertical_list`` (number of original attributes per client, in column order; a
partition key, shared with ``partition_method: vertical``), ``cut_layer_vertical_list`` (embedding width
per client).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slperf.common.config import ConfigError, RunConfig
from slperf.common.data import ShardLoader, cap_indices, load_dataset
from slperf.common.data.attributes import vertical_columns
from slperf.common.data.registry import DATASETS
from slperf.common.devices import cut_to_host
from slperf.common.models import seeded
from slperf.common.paradigms.base import (
    ClientData,
    ClientGone,
    ClientHandle,
    ClientLink,
    ClientMisbehaved,
    ClientParadigm,
    EvalResult,
    InferencePlan,
    InferenceUnsupported,
    ParadigmSpec,
    PhaseStream,
    RoundResult,
    ServerContext,
    ServerParadigm,
)
from slperf.common.paradigms.kit.cuts import state_layout
from slperf.common.paradigms.kit.serving import next_batches, refuse_poisoned
from slperf.common.paradigms.kit.steps import (
    MAX_PLAUSIBLE_LOSS,
    PoisonedStep,
    bottom_backward_step,
    check_step,
    clone_state,
    grad_of,
    make_optimizer,
)
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.privacy.defenses.client import ClientDefenses
from slperf.common.protocol.exchange import Exchange, SegmentLayout, Stage, TensorSpec
from slperf.common.protocol.types import CutReply, CutTensor, Phase, PhaseSummary, StepRef

HIDDEN = 16

DEVIATIONS = """\
* Only the label owner sends labels (SLPerf had every client send them, so every party held the labels).
* The sample ids travel with each batch and are checked, instead of trusting identical shuffles.
* A client that drops out is replaced by zeros for the rest of the round (its columns are missing, the
  others still learn) and is recorded as dropped; without the label owner a round cannot train and ends.
* A party whose embedding poisons the server's step is dropped the same way and recorded as misbehaved; a
  poisoned label owner fails the run (naming it). A party with misaligned sample ids is recorded as misbehaved."""


def _widths(config: RunConfig) -> list[int]:
    widths = config.options.get("cut_layer_vertical_list") or [4] * config.clients
    if len(widths) != config.clients:
        raise ConfigError(f"cut_layer_vertical_list has {len(widths)} entries for {config.clients} clients")
    return [int(w) for w in widths]


def _attribute_counts(config: RunConfig, num_attributes: int) -> list[int]:
    counts = config.data_vertical_list
    if counts:
        return [int(c) for c in counts]
    base, extra = divmod(num_attributes, config.clients)
    return [base + (1 if i < extra else 0) for i in range(config.clients)]


def bottom_model(in_features: int, width: int, seed: int, index: int) -> nn.Sequential:
    with seeded(seed * 7919 + index):
        return nn.Sequential(nn.Linear(in_features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, width))


def top_model(total_width: int, num_classes: int, seed: int) -> nn.Sequential:
    with seeded(seed):
        return nn.Sequential(nn.ReLU(), nn.Linear(total_width, 32), nn.ReLU(), nn.Linear(32, num_classes))


def vertical_client_data(config: RunConfig, index: int, cache_dir: Path | None = None) -> ClientData:
    """Every row of the (capped) training set, but only this client's feature columns."""
    dataset = load_dataset(config.dataset, config.data_dir, cache_dir, download=config.download)
    spec = dataset.spec
    if spec.kind != "tabular":
        raise ConfigError(f"paradigm 'vertical' needs a tabular dataset (adult, german), not '{config.dataset}'")
    columns = vertical_columns(spec, _attribute_counts(config, len(spec.features)))[index]
    rows = np.arange(len(dataset.arrays.train_y), dtype=np.int64)
    if config.max_train_samples is not None:
        rows = np.sort(cap_indices(rows, config.max_train_samples, config.seed))
    test = np.arange(len(dataset.arrays.test_y), dtype=np.int64)
    if config.max_test_samples is not None:
        test = np.sort(cap_indices(test, config.max_test_samples, config.seed))
    # client_index 0 for everyone: all parties must visit the rows in the same order.
    return ClientData(
        train=ShardLoader(dataset, rows, config.batch_size, config.seed, 0, train=True, columns=columns),
        test=ShardLoader(dataset, test, config.eval_batch_size, config.seed, 0, train=False, columns=columns),
        num_classes=spec.num_classes,
        input_shape=(len(columns),),
    )


class VerticalClient(ClientParadigm):
    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        super().__init__(config, index, num_clients, data)
        self.owner = index == config.options["label_owner"]
        self.bottom = self.placement.module(
            bottom_model(data.input_shape[0], _widths(config)[index], config.seed, index)
        )
        self.segments = {"bottom": self.bottom}
        self.optimizer = make_optimizer(self.bottom.parameters(), config)
        self.defenses = ClientDefenses(config, data.train, data.num_classes)  # ``defenses:``; none: a no-op

    def _batches(
        self, loader: ShardLoader, epoch: int, shuffle: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = loader.order(epoch, shuffle=shuffle)
        for start, (x, y) in zip(range(0, order.size, loader.batch_size), loader.batches(epoch, shuffle=shuffle)):
            yield x, y, torch.from_numpy(loader.indices[order[start : start + loader.batch_size]])

    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary:
        self.bottom.train()
        summary = PhaseSummary()
        for step, (x, y, ids) in enumerate(self._batches(self.data.train, round, True)):
            ref = StepRef(link.run_id, round, step, Phase.TRAIN)
            inputs = self.placement.inbound(x)
            with self.placement.autocast():
                emb = self.bottom(inputs)
            out = self.defenses.release(inputs, emb, y, round, step)  # what leaves this party, defended
            labels = out.labels if self.owner else None
            await link.send_cut_tensor(ref, cut_to_host(out.activations.detach()), labels=labels, sample_ids=ids)
            reply = await link.recv_reply(ref)
            if reply.tensor is not None:
                bottom_backward_step(out.activations, reply.tensor, self.optimizer, out.penalty)
            summary.add(int(x.shape[0]), reply.loss, reply.correct)
        return summary

    async def evaluate(self, link: ClientLink, round: int) -> PhaseSummary:
        self.bottom.eval()
        summary = PhaseSummary()
        for step, (x, y, ids) in enumerate(self._batches(self.data.test, 0, False)):
            with torch.no_grad(), self.placement.autocast():
                emb = self.defenses.release_eval(self.bottom(self.placement.inbound(x)))
            await link.send_cut_tensor(
                StepRef(link.run_id, round, step, Phase.EVAL),
                cut_to_host(emb),
                labels=y if self.owner else None,
                sample_ids=ids,
            )
            summary.add(int(x.shape[0]))
        return summary


class PoisonNotAttributed(ClientGone):
    """A step the server refused as poisoned although no single party's embedding poisons it alone (parties
    acting together): vertical SL cannot tell whose columns to drop, so the run fails rather than step on it."""

    def __init__(self, round: int, step: int, refused: PoisonedStep):
        reason = (
            f"round {round} step {step}: the server {refused}, and no single party's embedding does so alone: "
            "it cannot tell whose to drop, so the run fails (nothing of the batch was applied)"
        )
        Exception.__init__(self, reason)
        self.client_id = ""
        self.reason = reason


class VerticalServer(ServerParadigm):
    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.widths = _widths(config)
        self.owner = config.options["label_owner"]
        if not 0 <= self.owner < config.clients:
            raise ConfigError(f"label_owner {self.owner} is not a client index (0..{config.clients - 1})")
        self.top = self.placement.module(top_model(sum(self.widths), num_classes, config.seed))
        self.optimizer = make_optimizer(self.top.parameters(), config)

    def _step(
        self, embeddings: list[torch.Tensor], labels: torch.Tensor, train: bool
    ) -> tuple[list[torch.Tensor], float, int]:
        """One step of the top on every party's embedding; ``PoisonedStep`` (nothing applied) when what the server
        computed is not finite or not a loss any model gives."""
        parts = [self.placement.inbound(e).detach().requires_grad_(train) for e in embeddings]
        labels = self.placement.inbound(labels)
        if train:
            self.top.train()
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.top(torch.cat(parts, dim=1))
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            check_step(loss, torch.cat([grad_of(p) for p in parts], dim=1), self.top)
            self.optimizer.step()
            grads = [cut_to_host(grad_of(p)) for p in parts]
        else:
            self.top.eval()
            with torch.no_grad():
                logits = self.top(torch.cat(parts, dim=1))
                loss = F.cross_entropy(logits, labels, reduction="sum")
            value = float(loss)
            if not math.isfinite(value) or value > MAX_PLAUSIBLE_LOSS * labels.shape[0]:
                raise PoisonedStep(f"refused the evaluation batch: its loss is {value:.3g}")
            grads = []
        correct = int((logits.detach().argmax(1) == labels).sum())
        return grads, float(loss.detach()), correct

    @torch.no_grad()
    def _culprits(
        self, embeddings: list[torch.Tensor], present: list[int], labels: torch.Tensor, train: bool
    ) -> dict[int, PoisonedStep]:
        """Whose embedding poisoned a refused step: each present party's embedding alone, the others' replaced by
        zeros (as a dropped party's are), through the top; a party is a culprit when that loss is not one any model
        gives. Honest embeddings alone give an ordinary loss; one orders of magnitude off does not."""
        self.top.eval()
        labels = self.placement.inbound(labels)
        found: dict[int, PoisonedStep] = {}
        what = "step" if train else "evaluation batch"
        for i in present:
            parts = [self.placement.inbound(e if j == i else torch.zeros_like(e)) for j, e in enumerate(embeddings)]
            value = float(F.cross_entropy(self.top(torch.cat(parts, dim=1)), labels))
            if not math.isfinite(value) or value > MAX_PLAUSIBLE_LOSS:
                found[i] = PoisonedStep(
                    f"refused the {what}: with this party's embedding alone the top's loss is {value:.3g}, beyond "
                    f"any model's (> {MAX_PLAUSIBLE_LOSS:g}): its activations are far off"
                )
        return found

    async def _lockstep(
        self,
        clients: Sequence[ClientHandle],
        streams: Sequence[PhaseStream],
        train: bool,
        dropped: list[str],
        misbehaved: dict[str, str],
    ) -> tuple[int, float, int]:
        """Drives all streams one step at a time; returns (correct, loss_sum, samples).

        A party whose embedding poisons a step (``_culprits``) is told why, leaves the pass as misbehaved and is
        replaced by zeros, and the step is taken again without it; nothing of the refused step was applied. The
        label owner cannot be replaced (no labels, no step): its poisoned batch fails the run, naming it."""
        iters = [aiter(s) for s in streams]
        alive = [True] * len(clients)
        ignored = [False] * len(clients)  # refused while evaluating: its pass is read to the end, not used
        correct = samples = 0
        loss_sum = 0.0

        def leave(i: int, reason: str | None = None) -> None:
            alive[i] = False
            dropped.append(clients[i].client_id)
            if reason is not None:
                misbehaved[clients[i].client_id] = reason

        while True:
            pulled = await next_batches([it if ok else None for it, ok in zip(iters, alive)])
            batches: list[CutTensor | None] = []
            for i, got in enumerate(pulled):
                if isinstance(got, ClientGone):
                    if not ignored[i]:
                        leave(i)
                    alive[i] = False
                    got = None
                batches.append(None if ignored[i] else got)
            if all(b is None for b in batches):
                return correct, loss_sum, samples
            owner = batches[self.owner]
            if owner is None:
                raise ClientGone(clients[self.owner].client_id, "the label owner's batches ended before the others'")
            ids = owner.sample_ids
            size = owner.tensor.shape[0]
            embeddings = []
            for i, batch in enumerate(batches):
                if batch is not None and (
                    batch.tensor.shape[0] != size
                    or batch.sample_ids is None
                    or (ids is not None and not torch.equal(batch.sample_ids, ids))
                ):
                    # Misaligned: this party's rows are not the owner's; it sits out the rest of the pass.
                    reason = f"step {batch.ref.step}: sample ids differ from the label owner's"
                    await clients[i].abort(reason)
                    leave(i, f"misaligned: round {batch.ref.round} {reason}")
                    batches[i] = batch = None
                if batch is None:
                    embeddings.append(torch.zeros(size, self.widths[i]))
                    continue
                embeddings.append(batch.tensor)
            while True:
                try:
                    grads, loss, n_correct = await self.ctx.compute(self._step, embeddings, owner.labels, train)
                    break
                except PoisonedStep as refused:
                    present = [i for i, b in enumerate(batches) if b is not None]
                    culprits = await self.ctx.compute(self._culprits, embeddings, present, owner.labels, train)
                    if not culprits:
                        raise PoisonNotAttributed(owner.ref.round, owner.ref.step, refused) from None
                    for i, err in culprits.items():
                        if train:
                            gone = await refuse_poisoned(clients[i], owner.ref.round, owner.ref.step, err)
                        else:
                            # Not stopped: an evaluating party does not wait for replies, so its next batches are
                            # already on the way and would land in its next pass; they are read and ignored.
                            gone = ClientMisbehaved(
                                clients[i].client_id,
                                f"poisoned compute: round {owner.ref.round} step {owner.ref.step}: the server "
                                f"{err}; the rest of its evaluation pass is ignored (scored without its columns)",
                            )
                        if i == self.owner:
                            raise ClientMisbehaved(
                                gone.client_id,
                                f"{gone.reason}; it is the label owner, and vertical SL cannot step without its "
                                "labels: the run fails (nothing of the refused batch was applied)",
                            ) from None
                        if train:
                            leave(i, gone.reason)
                        else:
                            ignored[i] = True
                            misbehaved[clients[i].client_id] = gone.reason
                        batches[i] = None
                        embeddings[i] = torch.zeros(size, self.widths[i])
            correct += n_correct
            loss_sum += loss * (1 if not train else size)
            samples += size
            if train:
                await asyncio.gather(
                    *(
                        clients[i].reply(CutReply(b.ref, grads[i], loss, n_correct, size))
                        for i, b in enumerate(batches)
                        if b is not None
                    ),
                    return_exceptions=True,
                )

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        result = RoundResult(participants=[])
        streams = [c.train(round) for c in clients]
        await self._lockstep(clients, streams, True, result.dropped, result.misbehaved)
        for client, stream in zip(clients, streams):
            if client.client_id not in result.dropped and stream.summary is not None:
                result.participants.append(client.client_id)
                result.per_client[client.client_id] = stream.summary
        return result

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        streams = [c.evaluate(round) for c in clients]
        misbehaved: dict[str, str] = {}
        correct, loss_sum, samples = await self._lockstep(clients, streams, False, [], misbehaved)
        return EvalResult(
            accuracy=correct / samples if samples else 0.0,
            loss=loss_sum / samples if samples else 0.0,
            samples=samples,
            misbehaved=misbehaved,
        )

    def model_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"top": clone_state(self.top)}

    def inference_plan(self, clients: Sequence[ClientHandle]) -> InferencePlan:
        raise InferenceUnsupported(
            "vertical split learning does not support split inference: the top needs every feature party's "
            "embedding of the same sample at once, and `slperf predict` is one silo's request; assemble the "
            "model on one machine instead (slperf export --assemble)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"top": self.top.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.optimizer.load_state_dict(state["optimizer"])


def _validate(options: dict[str, Any]) -> None:
    for key in ("cut_layer_vertical_list",):
        value = options.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value)):
            raise ConfigError(f"option '{key}' must be a list of positive integers, got {value!r}")
    if options["label_owner"] < 0:
        raise ConfigError("option 'label_owner' must be a client index >= 0")


def _exchange(config: RunConfig, client_index: int) -> Exchange:
    """Each party its own embedding width; every message names its samples; labels only from the owner.

    train  up the party's embedding (+ labels from the owner), with the sample ids; down its gradient
    eval   up the embedding (+ labels from the owner), with the sample ids; no reply
    """
    width = _widths(config)[client_index]
    emb = TensorSpec((width,))
    owner = client_index == config.options["label_owner"]
    spec = DATASETS[config.dataset]
    columns = vertical_columns(spec, _attribute_counts(config, len(spec.features)))[client_index]
    bottom = bottom_model(len(columns), width, config.seed, client_index)
    return Exchange(
        train=(Stage(up=emb, down=emb, labels=owner, sample_ids=True),),
        eval=(Stage(up=emb, labels=owner, sample_ids=True),),
        num_classes=spec.num_classes,
        max_batch=config.batch_size,
        max_eval_batch=config.eval_batch_size,
        segments=(SegmentLayout("bottom", state_layout(bottom)),),
    )


THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "each client's embedding of its columns, with the batch's sample ids, every batch"),
        Exposure(Seen.LABELS, "from the label owner only, with every batch"),
    ),
    client=(Exposure(Seen.CUT_GRADIENTS, "its slice of the gradient, every training batch"),),
    notes="no weights cross: the server never holds a client's bottom",
)


SPEC = register(
    ParadigmSpec(
        name="vertical",
        server=VerticalServer,
        client=VerticalClient,
        exchange=_exchange,
        threats=THREATS,
        aliases=("vertical", "vsl"),
        time_factor=1.3,
        options={"cut_layer_vertical_list": (list, None), "label_owner": (int, 0)},
        validate=_validate,
        client_data=vertical_client_data,
        deviations=DEVIATIONS,
        summary="feature columns split across clients (same rows), one label owner, lock-step per batch",
    )
)
