"""The silo's side of split inference (``slperf predict``): its own segments of a finished run, kept by its
daemon (``StateStore.load_final``), run on its own inputs; the cut activations go to the server's ``Predict``
over the silo's mutual-TLS identity, and the server's answer comes back.

Bottom/top paradigms: the bottom runs here, the server's top returns the logits. U-shaped: the head runs here,
the server's middle returns its output, and the tail runs here too, so the model's outputs exist only on the
silo; no label exists at inference at all. Batches are pipelined: up to ``window`` requests are in flight.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import torch
from torch import nn

from slperf.common.data.registry import DATASETS
from slperf.common.data.spec import DatasetSpec
from slperf.common.paradigms.kit.inference import ModelFacts, build_segment
from slperf.common.wire.codec import TensorLimits, decode_tensor, encode_tensor
from slperf.slclient.inputs import prepare
from slperf.slclient.state_store import StateStore
from slperf.v1 import inference_pb2, inference_pb2_grpc

_REPLY_LIMITS = TensorLimits()

# Sees every message this side sends ("up", a PredictRequest) and receives ("down", a PredictReply): the tests
# inspect what crossed the wire with it.
Observer = Callable[[str, Any], None]


@dataclass
class LocalModel:
    """This client's segments of a finished run: the first (bottom or head) and, U-shaped, the tail."""

    run_id: str
    client_id: str
    spec: DatasetSpec
    sample_shape: tuple[int, ...]
    first: nn.Module
    tail: nn.Module | None

    @property
    def kind(self) -> str:
        return "middle" if self.tail is not None else "top"


def load_local_model(store: StateStore, run_id: str) -> LocalModel:
    """The segments ``store``'s client kept of ``run_id``; FileNotFoundError/ValueError say why there are none."""
    layout, segments = store.load_final(run_id)
    try:
        facts = ModelFacts(
            layout["model"], tuple(layout["model_input_shape"]), int(layout["num_classes"]), int(layout["seed"])
        )
        blocks = {name: (int(span[0]), int(span[1])) for name, span in layout["segments"].items()}
        spec = DATASETS[layout["dataset"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the layout of run {run_id}'s final segments is incomplete: {exc}") from None
    if set(blocks) == {"bottom"}:
        first, tail = build_segment(facts, blocks["bottom"], segments["bottom"]), None
    elif set(blocks) == {"head", "tail"}:
        first = build_segment(facts, blocks["head"], segments["head"])
        tail = build_segment(facts, blocks["tail"], segments["tail"])
    else:
        raise ValueError(f"run {run_id}: segments {sorted(blocks)} are not a bottom, nor a head and a tail")
    return LocalModel(run_id, store.client_id, spec, facts.input_shape, first, tail)


@dataclass
class Predictions:
    classes: np.ndarray  # int64, one per sample
    probabilities: np.ndarray  # float32, samples × classes (softmax of the outputs)


class Predictor:
    """Runs a ``LocalModel`` with the server's segment in between, over one ``Predict`` call per ``predict``."""

    def __init__(
        self,
        channel: grpc.Channel,
        model: LocalModel,
        *,
        window: int = 4,
        observe: Observer | None = None,
        timeout: float | None = None,
    ):
        self.stub = inference_pb2_grpc.InferenceStub(channel)
        self.model = model
        self.window = max(1, window)
        self.observe = observe
        self.timeout = timeout

    def _request(self, index: int, batch: np.ndarray) -> inference_pb2.PredictRequest:
        with torch.no_grad():
            acts = self.model.first(prepare(batch, self.model.spec))
        return inference_pb2.PredictRequest(
            run_id=self.model.run_id, client_id=self.model.client_id, batch=index, activations=encode_tensor(acts)
        )

    def _finish(self, reply: inference_pb2.PredictReply, expected: int) -> torch.Tensor:
        if reply.batch != expected:
            raise ValueError(f"the server answered batch {reply.batch} while batch {expected} was due")
        out = decode_tensor(reply.output, name="output", limits=_REPLY_LIMITS)
        if self.model.tail is not None:
            with torch.no_grad():
                out = self.model.tail(out)
        return out

    def predict(
        self, samples: np.ndarray, batch_size: int, on_batch: Callable[[int], None] | None = None
    ) -> Predictions:
        """Every sample's class and probabilities; ``on_batch(n)`` after each batch of ``n`` samples is done."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        outbox: queue.Queue[inference_pb2.PredictRequest | None] = queue.Queue()

        def requests() -> Iterator[inference_pb2.PredictRequest]:
            while (item := outbox.get()) is not None:
                if self.observe is not None:
                    self.observe("up", item)
                yield item

        replies = self.stub.Predict(requests(), timeout=self.timeout)
        outputs: list[torch.Tensor] = []
        pending: deque[tuple[int, int]] = deque()  # (batch number, samples) in flight

        def collect() -> None:
            number, size = pending.popleft()
            reply = next(replies)
            if self.observe is not None:
                self.observe("down", reply)
            outputs.append(self._finish(reply, number))
            if on_batch is not None:
                on_batch(size)

        try:
            for number, start in enumerate(range(0, len(samples), batch_size)):
                batch = samples[start : start + batch_size]
                outbox.put(self._request(number, batch))
                pending.append((number, len(batch)))
                if len(pending) >= self.window:
                    collect()
            outbox.put(None)
            while pending:
                collect()
        finally:
            outbox.put(None)  # ends the request stream whatever happened
            replies.cancel()
        logits = torch.cat(outputs).to(torch.float32)
        return Predictions(logits.argmax(dim=1).numpy(), torch.softmax(logits, dim=1).numpy())


def write_predictions(path: Any, predictions: Predictions, probabilities: bool) -> None:
    """CSV: ``index,class`` and, with ``probabilities``, ``p0..p<K-1>``; written atomically."""
    from slperf.common.fsutil import atomic_write

    classes = predictions.probabilities.shape[1]
    header = ["index", "class"] + ([f"p{k}" for k in range(classes)] if probabilities else [])
    lines = [",".join(header)]
    for index, cls in enumerate(predictions.classes.tolist()):
        row = [str(index), str(cls)]
        if probabilities:
            row += [f"{p:.6g}" for p in predictions.probabilities[index].tolist()]
        lines.append(",".join(row))
    atomic_write(path, "\n".join(lines) + "\n")
