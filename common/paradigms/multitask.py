"""Multi-task (task-agnostic) split learning, FeSTA-like (Park et al., NeurIPS 2021); SLPerf ``TaskAgnostic``.

Who holds what: clients are grouped by task. Every client holds a task-specific head and tail and its
labels (U-shaped SL per client, ``kit.ushaped``); the server holds one body (the middle of the model)
shared by every task. Option ``client_split`` gives cumulative client-index bounds per task, as SLPerf's:
``[2, 4]`` puts clients 0-1 on task 0 and clients 2-3 on task 1 (empty = one task with every client); the
last bound must equal ``clients``. Option ``task_datasets`` names each task's data set (empty = every task
uses ``dataset``); all tasks must share the input shape (the body's input), their class counts may differ
(each tail has its task's). The cuts are U-shaped's: ``[split_layer, tail_layer]``.

Data (the spec's ``client_data`` hook, in place of the daemon's default shard): a client loads its task's
data set and takes its shard of a split of that task's training set among the task's clients only
(``partition_method`` etc. as configured; the partition seed is ``seed + task index``, so two tasks on the
same data set get different splits); its test set is its task's test set (capped by ``max_test_samples``).

Protocol, per round: the task groups take turns, in task order. For group t:
  1. every member receives the group's head and tail (``set_weights``);
  2. the members train their shards at the same time, and the server serves their steps in lock-step, in
     member order: member 0's step 0, member 1's step 0, ..., member 0's step 1, ... Each step is the
     U-shaped 4-message exchange (head activations up, body output down, gradient of the body output up,
     gradient of the head activations down; no labels ever leave a client); the body steps once per member
     step. A member whose shard is exhausted (or who drops out) leaves the rotation;
  3. the server collects every member's head and tail and FedAvgs them within the group (fresh tensors,
     weighted by the samples each member trained on this round); the average is the group's head and tail.
Evaluation: per task, through one member of the group with the group's averaged head and tail, on that
task's test set (the client scores its tail output against its own labels). The round's accuracy pools
the tasks' correct answers over their samples; per-task accuracies go in the evaluation's
``extra["task_accuracy"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slperf.common.config import ConfigError, RunConfig
from slperf.common.data.registry import DATASETS
from slperf.common.data.spec import DatasetSpec
from slperf.common.paradigms.base import (
    ClientData,
    ClientHandle,
    EvalResult,
    NoClientLeft,
    ParadigmSpec,
    RoundResult,
    ServerContext,
    ServerParadigm,
)
from slperf.common.paradigms.kit.aggregate import aggregate, aggregation_rule, pooled
from slperf.common.paradigms.kit.rounds import first_available, gather_round
from slperf.common.paradigms.kit.serving import RoundRobinGate
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

DEVIATIONS = """\
* FedAvg into fresh tensors, weighted by sample counts. SLPerf started the average from the last
  uploader's own dict (overwriting it before reading it) and, for every group but the first, added the
  full weighted sum on top of the last sender's parameters (about double scale); it weighted by batches.
* SLPerf waited for every member's head activations before serving any; here a member is served as soon
  as it is its turn, in the same member order, so the result is the same but no member idles for
  the slowest; members with fewer batches simply leave the rotation (SLPerf's barrier needed equal shards).
* Evaluation runs once per task per round through one member (after FedAvg every member of a group holds
  the same head and tail, so SLPerf's per-member evaluations were duplicates).
* A client that drops out loses its part of the round and is left out of its group's average; the other
  members and groups go on (RoundResult.dropped).
* task_datasets replaces SLPerf's list-valued dataset; a task data set other than dataset is
  read from the registry artifact (data_dir applies to dataset only) in the client daemon's data cache."""


# -- tasks ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    index: int
    dataset: str
    members: range  # client indices


def task_layout(config: RunConfig) -> list[Task]:
    """The task groups from ``client_split`` and ``task_datasets``, checked against ``clients``."""
    bounds = list(config.options.get("client_split") or [config.clients])
    names = list(config.options.get("task_datasets") or [config.dataset] * len(bounds))
    if bounds[-1] != config.clients:
        raise ConfigError(
            f"option 'client_split' {bounds} must end at the number of clients ({config.clients}): "
            f"its entries are cumulative client-index bounds per task"
        )
    if len(names) != len(bounds):
        raise ConfigError(
            f"option 'task_datasets' names {len(names)} data sets for {len(bounds)} tasks (client_split {bounds})"
        )
    starts = [0, *bounds[:-1]]
    return [Task(i, names[i], range(lo, hi)) for i, (lo, hi) in enumerate(zip(starts, bounds))]


def task_of(config: RunConfig, client_index: int) -> Task:
    for task in task_layout(config):
        if client_index in task.members:
            return task
    raise ConfigError(f"client index {client_index} is in no task of client_split")


def task_spec(name: str, input_shape: Sequence[int]) -> DatasetSpec:
    """The registry entry of a task's data set; every task must have the body's input shape."""
    spec = DATASETS.get(name.lower())
    if spec is None:
        raise ConfigError(
            f"option 'task_datasets' names unknown data set '{name}' (known: {', '.join(sorted(DATASETS))})"
        )
    if tuple(spec.input_shape) != tuple(input_shape):
        raise ConfigError(
            f"task data set '{name}' has input shape {tuple(spec.input_shape)}, but the shared body "
            f"is built for {tuple(input_shape)} (the input of 'dataset'): tasks must share the input shape"
        )
    return spec


def task_client_data(config: RunConfig, index: int, cache_dir: Path | None = None) -> ClientData:
    """A client's shard of its task's training set (split among the task's clients only) and test set: the
    spec's ``client_data`` hook, which the client daemon calls instead of building the default shard."""
    from slperf.common.data import ShardLoader, cap_indices, load_dataset, partition
    from slperf.common.shards import train_indices

    task = task_of(config, index)
    task_spec(task.dataset, DATASETS[config.dataset].input_shape)  # the shared body's input shape
    own = task.dataset == config.dataset
    dataset = load_dataset(task.dataset, config.data_dir if own else None, cache_dir, download=config.download and own)
    spec, arrays = dataset.spec, dataset.arrays
    labels = np.asarray(arrays.train_y)
    pool = train_indices(config, labels)
    shards = partition(
        labels[pool],
        config.partition_method,
        len(task.members),
        config.seed + task.index,
        alpha=config.partition_alpha,
        class_number_per_client=config.class_number_per_client,
        equal_size=config.equal_size,
        num_classes=spec.num_classes,
    )
    shard = pool[shards[index - task.members.start]]
    test = np.arange(len(arrays.test_y), dtype=np.int64)
    if config.max_test_samples is not None:
        test = cap_indices(test, config.max_test_samples, config.seed)
    return ClientData(
        train=ShardLoader(dataset, shard, config.batch_size, config.seed, index, train=True),
        test=ShardLoader(dataset, test, config.eval_batch_size, config.seed, index, train=False),
        num_classes=spec.num_classes,
        input_shape=tuple(spec.input_shape),
    )


# -- server half ------------------------------------------------------------------------------------------
class MultiTaskServer(ServerParadigm):
    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.tasks = task_layout(config)
        self.middle = self.placement.module(build_ushaped(config, input_shape, num_classes).segments[1])
        self.optimizer = make_optimizer(self.middle.parameters(), config)
        self.ends = []
        for task in self.tasks:
            classes = task_spec(task.dataset, input_shape).num_classes
            split = build_ushaped(config, input_shape, classes)
            self.ends.append({HEAD: clone_state(split.segments[0]), TAIL: clone_state(split.segments[2])})

    def _members(self, task: Task, clients: Sequence[ClientHandle]) -> list[ClientHandle]:
        return [c for c in clients if c.index in task.members]

    async def _member_turn(
        self, client: ClientHandle, task: Task, round: int, gate: RoundRobinGate
    ) -> tuple[PhaseSummary, Ends]:
        ends = self.ends[task.index]
        try:
            await send_ends(client, ends, round)
            summary = await serve_ushaped(self.ctx, client, round, self.middle, self.optimizer, gate)
        finally:
            gate.leave(client.client_id)  # also when it dropped out before its first step
        return summary, await collect_ends(client, ends, round)

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        result = RoundResult(participants=[])
        for task in self.tasks:  # the groups take turns
            members = self._members(task, clients)
            gate = RoundRobinGate([c.client_id for c in members])

            async def turn(
                c: ClientHandle, task: Task = task, gate: RoundRobinGate = gate
            ) -> tuple[PhaseSummary, Ends]:
                return await self._member_turn(c, task, round, gate)

            outcome = await gather_round(members, turn)
            group = outcome.to_result(lambda done: done[0])
            result.participants += group.participants
            result.dropped += group.dropped
            result.per_client.update(group.per_client)
            result.misbehaved.update(group.misbehaved)
            uploads = [(new, summary.samples) for _, (summary, new) in outcome.done if summary.samples]
            rule = aggregation_rule(self.config)
            averaged = {
                segment: await self.ctx.compute(aggregate, [(new[segment], n) for new, n in uploads], rule)
                for segment in (HEAD, TAIL)
            }
            if all(state is not None for state in averaged.values()):
                self.ends[task.index] = {segment: state for segment, state in averaged.items() if state is not None}
        return result

    async def _evaluate_task(self, client: ClientHandle, task: Task, round: int) -> EvalResult:
        await send_ends(client, self.ends[task.index], round)
        return await evaluate_ushaped(self.ctx, client, round, self.middle)

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        per_task: dict[int, EvalResult] = {}
        misbehaved: dict[str, str] = {}
        for task in self.tasks:
            try:

                async def through(c: ClientHandle, task: Task = task) -> EvalResult:
                    return await self._evaluate_task(c, task, round)

                members = self._members(task, clients)
                per_task[task.index] = await first_available(members, through, "evaluate through", misbehaved)
            except NoClientLeft:
                continue  # the task's members are all gone; the other tasks still count
        if not per_task:
            raise NoClientLeft("evaluate through")
        result = pooled(list(per_task.values()))
        result.misbehaved.update(misbehaved)
        result.extra["task_accuracy"] = {str(t): r.accuracy for t, r in per_task.items()}
        return result

    def model_state(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {"middle": clone_state(self.middle)}
        for task in self.tasks:
            for segment, state in self.ends[task.index].items():
                out[f"{segment}.{task.index}"] = state
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"middle": self.middle.state_dict(), "optimizer": self.optimizer.state_dict(), "ends": self.ends}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_state(self.middle, state["middle"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ends = [{k: dict(v) for k, v in ends.items()} for ends in state["ends"]]


# -- registration -----------------------------------------------------------------------------------------
def _validate(options: dict[str, Any]) -> None:
    split = options["client_split"]
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in split) or any(
        b <= a for a, b in zip([0, *split], split)
    ):
        raise ConfigError(
            f"option 'client_split' must be strictly increasing positive client counts "
            f"(cumulative bounds per task, e.g. [2, 4]), got {split}"
        )
    names = options["task_datasets"]
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"option 'task_datasets' must be a list of data set names, got {names}")
    if names and split and len(names) != len(split):
        raise ConfigError(f"option 'task_datasets' has {len(names)} names but client_split has {len(split)} tasks")
    check_tail_layer(options)


def _exchange(config: RunConfig, client_index: int) -> Exchange:
    """U-shaped, with the shapes of the client's own task (its data set's classes)."""
    shared_input = DATASETS[config.dataset].input_shape
    task = task_spec(task_of(config, client_index).dataset, shared_input)
    return ushaped_exchange(config, shared_input, task.num_classes)


THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "the head's output, every training and evaluation batch of every client"),
        Exposure(Seen.TAIL_GRADIENTS, "d loss / d (body output) from the client's tail, every training batch"),
        Exposure(Seen.CLIENT_WEIGHTS, "every member's head and tail after every round, before the group's FedAvg"),
    ),
    client=(
        Exposure(Seen.SERVER_OUTPUT, "the body's output, every training and evaluation batch"),
        Exposure(Seen.CUT_GRADIENTS, "d loss / d (head output), every training batch"),
        Exposure(Seen.WEIGHTS, "its task group's FedAvg'd head and tail, before every round"),
    ),
    producer="it FedAvgs each group's heads and tails and sends the average the group starts the round from",
    notes="labels never cross, but holding the tails the server can run them on its body's output",
)


SPEC = register(
    ParadigmSpec(
        name="multitask",
        server=MultiTaskServer,
        client=UShapedClient,
        exchange=_exchange,
        threats=THREATS,
        aliases=("TaskAgnostic",),
        time_factor=1.6,
        options={"client_split": (list, []), "task_datasets": (list, []), "tail_layer": (int, -1)},
        validate=_validate,
        client_data=task_client_data,
        deviations=DEVIATIONS,
        averages=True,
        summary="multi-task U-shaped SL: task groups of clients with their own heads + tails + labels, one shared "
        "server body; groups take turns; heads and tails FedAvg'd within a group each round",
    )
)
