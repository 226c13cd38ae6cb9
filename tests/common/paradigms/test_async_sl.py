"""AsyncSL, observed on the wire: in state A the vanilla exchange; in B activations and labels go up but no
gradient comes down and the bottom is not collected; in C the client sends nothing and the server trains on
exactly the activations it cached in B; transitions follow ``thred``."""

from __future__ import annotations

import asyncio

import pytest
import torch
from sl_wire_harness import InProcessFederation, config_from, reload_server, same_model

from slperf.common.config import ConfigError
from slperf.common.paradigms.async_sl import next_state
from slperf.common.protocol.types import Phase
from slperf.common.wire.codec import decode_tensor

BASE = {
    "paradigm": "Asynchronous",
    "dataset": "mnist",
    "clients": 2,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 256,
    "max_test_samples": 64,
    "eval_batch_size": 64,
    "seed": 2,
    "client_timeout": 30.0,
}


def make_config(**overrides):
    return config_from(BASE, **overrides)


def fingerprints(acts: torch.Tensor) -> torch.Tensor:
    """One number per sample row, sorted: equal multisets of rows give equal fingerprints."""
    flat = acts.reshape(acts.shape[0], -1).to(torch.float64)
    weights = torch.linspace(1.0, 2.0, flat.shape[1], dtype=torch.float64)
    return torch.sort(flat @ weights).values


def test_transition_rule():
    assert next_state("A", None, 1.0, 0.1) == "A"  # first turn: nothing to compare with
    assert next_state("A", 1.0, 0.5, 0.1) == "A"  # improved by 50 %: stays
    assert next_state("A", 1.0, 0.95, 0.1) == "B"  # improved by 5 % < 10 %: one step on
    assert next_state("B", 1.0, 0.95, 0.1) == "C"
    assert next_state("C", 1.0, 0.95, 0.1) == "C"
    assert next_state("C", 1.0, 1.01, 0.1) == "A"  # got worse: back to A
    assert next_state("B", 1.0, 1.01, 0.1) == "A"
    assert next_state("A", 1.0, 0.99, 0.0) == "A"  # thred 0: never leaves A
    assert make_config().paradigm == "async" and make_config().options["loss_threshold"] == 0.1
    with pytest.raises(ConfigError, match="thred"):
        make_config(thred=1.5)


def test_states_on_the_wire_and_training_on_the_cache():
    config = make_config(epochs=4, thred=1.0)  # any improvement is "too small": A -> B -> C

    async def main():
        async with InProcessFederation(config) as fed:
            await fed.round(0)  # both in A; no previous loss to compare with yet
            await fed.round(1)  # both in A
            assert fed.server.states == {"c1": "B", "c2": "B"}
            fed.server.states["c2"] = "A"  # keep c2 in A to see both kinds of turn side by side
            await fed.round(2)
            assert fed.server.states["c1"] == "C"
            fed.server.states["c2"] = "A"
            calls_before = len(fed.ctx.calls)
            await fed.round(3)
            return fed, fed.ctx.calls[calls_before:]

    fed, round3_calls = asyncio.run(main())
    steps = 4  # 128 samples per client, batch 32
    # Round 0, state A, as vanilla: acts + labels up, a gradient per batch down, bottom collected.
    for cid in ("c1", "c2"):
        assert all(a.HasField("labels") for a in fed.cut_tensors(cid, round=0, phase=Phase.TRAIN))
        assert all(g.HasField("tensor") for g in fed.cut_replies(cid, round=0, phase=Phase.TRAIN))
    # Round 2: c1 in B. It still sends acts + labels, is told its state, gets metrics but no gradient,
    # and its bottom is not collected; c2 (A) is unaffected.
    train = [m.instruction.train for m in fed.down("c1", "instruction") if m.instruction.HasField("train")]
    assert [t.options_json for t in train] == ['{"state": "A"}', '{"state": "A"}', '{"state": "B"}']
    b_acts = fed.cut_tensors("c1", round=2, phase=Phase.TRAIN)
    assert len(b_acts) == steps and all(a.HasField("labels") for a in b_acts)
    b_replies = fed.cut_replies("c1", round=2, phase=Phase.TRAIN)
    assert len(b_replies) == steps and not any(g.HasField("tensor") for g in b_replies)
    assert all(g.count == 32 and g.loss > 0 for g in b_replies)
    requests = [
        m.instruction.request_weights.round
        for m in fed.down("c1", "instruction")
        if m.instruction.HasField("request_weights")
    ]
    assert requests == [0, 1]
    assert all(g.HasField("tensor") for g in fed.cut_replies("c2", round=2, phase=Phase.TRAIN))
    # Round 3: c1 in C. Not one activation from c1, no reply to it, no instruction to train.
    assert fed.cut_tensors("c1", round=3) == []
    assert fed.cut_replies("c1", round=3) == []
    assert len(train) == 3
    # ... and the server trained on exactly the activations and labels c1 sent in B, reshuffled.
    result, _ = fed.results[3]
    assert result.extra["states"] == {"c1": "C", "c2": "A"}
    assert result.per_client["c1"].samples == 128 and result.per_client["c1"].steps == steps
    cached_steps = [args for name, args in round3_calls if name == "top_train_step"][:steps]
    used_acts = torch.cat([args[2] for args in cached_steps])
    used_labels = torch.cat([args[3] for args in cached_steps])
    sent_acts = torch.cat([decode_tensor(a.tensor) for a in b_acts])
    sent_labels = torch.cat([decode_tensor(a.labels) for a in b_acts])
    assert torch.equal(fingerprints(used_acts), fingerprints(sent_acts))
    assert torch.equal(torch.sort(used_labels).values, torch.sort(sent_labels).values)
    assert not torch.equal(used_labels, sent_labels)  # reshuffled into new batches


def test_transitions_follow_thred(tmp_path):
    config = make_config(epochs=4, thred=0.99, clients=1, max_train_samples=192)

    async def main():
        async with InProcessFederation(config) as fed:
            await fed.run()
            return fed

    fed = asyncio.run(main())
    states = [r.extra["states"]["c1"] for r, _ in fed.results]
    losses = [r.per_client["c1"].mean_loss for r, _ in fed.results]
    # Replay the rule on the server's own losses: the states used are exactly what it prescribes.
    expected, previous, state = [], None, "A"
    for loss in losses:
        expected.append(state)
        state = next_state(state, previous, loss, 0.99)
        previous = loss
    assert states == expected
    assert states[:2] == ["A", "A"] and "B" in states  # improvements are far below 99 %
    # Per state, what the client sent: A and B send every batch, C nothing.
    for rnd, state in enumerate(states):
        sent = fed.cut_tensors("c1", round=rnd, phase=Phase.TRAIN)
        assert len(sent) == (0 if state == "C" else 6)
    assert all(0.0 <= e.accuracy <= 1.0 for _, e in fed.results)
    # Resuming from a checkpoint keeps weights, states and losses; the activation cache is not in it.
    fresh = reload_server(fed, tmp_path / "checkpoint.pt")
    assert same_model(fresh.model_state(), fed.server.model_state())
    assert fresh.states == fed.server.states and fresh.losses == fed.server.losses and fresh.cache == {}


def test_dropout_loses_the_turn_and_the_ring_goes_on():
    config = make_config(clients=3, max_train_samples=192)
    box = []

    def after_up(client_id, envelope):
        if client_id == "c1" and envelope.WhichOneof("body") == "cut_tensor":
            box[0].cut("c1")

    async def main():
        async with InProcessFederation(config, after_up=after_up) as fed:
            box.append(fed)
            await fed.run()
            return fed

    fed = asyncio.run(main())
    result, evaluation = fed.results[0]
    assert result.dropped == ["c1"] and result.participants == ["c2", "c3"]
    assert evaluation.samples == 64
