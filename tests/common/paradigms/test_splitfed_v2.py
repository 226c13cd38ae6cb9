"""splitfed_v2: one shared top stepped by every client batch; sample-weighted FedAvg of the bottoms."""

from __future__ import annotations

import copy

import pytest
import torch
from parallel_fakes import count_calls, make_config, run

from slperf.common.config import ConfigError
from slperf.common.paradigms.kit.aggregate import fedavg
from slperf.common.paradigms.kit.steps import make_optimizer, top_train_step


def _setup(store):
    def setup(fed):
        store["top"] = copy.deepcopy(fed.server.top)
        store["steps"] = count_calls(fed.server.optimizer, "step")

    return setup


@pytest.mark.parametrize("order", ["parallel", "sequential"])
def test_one_shared_top_steps_once_per_client_batch(order):
    store = {}
    config = make_config(paradigm="splitfed_v2", order=order, clients=3, max_train_samples=288)
    fed = run(config, setup=_setup(store), evaluate=False)
    served = fed.wire.select(direction="down", kind="cut_reply")
    assert store["steps"][0] == len(served) == 9
    # there is one top: replaying every batch in the order the server answered it reproduces it
    top = store["top"]
    opt = make_optimizer(top.parameters(), config)
    for entry in served:
        batch = fed.wire.select(client=entry.client, kind="cut_tensor")[entry.payload.ref.step].payload
        out = top_train_step(top, opt, batch.tensor, batch.labels)
        torch.testing.assert_close(entry.payload.tensor, out.grad)
    for name, tensor in top.state_dict().items():
        torch.testing.assert_close(fed.server.top.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    order_seen = [e.client for e in served]
    if order == "sequential":
        assert order_seen == ["c1"] * 3 + ["c2"] * 3 + ["c3"] * 3
        # clients in turn: c2 starts only after c1 returned its bottom
        entries = fed.wire.entries
        c1_done = next(e.seq for e in entries if e.client == "c1" and e.kind == "model_state" and e.direction == "up")
        c2_first = next(e.seq for e in entries if e.client == "c2" and e.kind == "cut_tensor")
        assert c1_done < c2_first
    else:
        assert order_seen != sorted(order_seen)  # the clients ran at the same time


def test_bottoms_are_fedavged_by_samples_and_everyone_starts_the_next_round_from_the_average():
    config = make_config(
        paradigm="splitfed_v2",
        clients=3,
        epochs=2,
        partition_method="hetero",
        partition_alpha=0.5,
        max_train_samples=300,
    )
    fed = run(config)
    uploads = [
        (e.payload[0], fed.rounds[0].per_client[e.client].samples)
        for e in fed.wire.select(direction="up", kind="model_state")
    ][:3]
    assert len({n for _, n in uploads}) > 1  # unequal weights, so the weighting is tested
    expected = fedavg(uploads)
    for conn in fed.conns:
        round1 = fed.wire.select(client=conn.client_id, direction="down", kind="model_state")[1].payload[1]
        for name, tensor in expected.items():
            torch.testing.assert_close(round1[name], tensor)
    unweighted = fedavg([(s, 1) for s, _ in uploads])
    assert any(not torch.allclose(expected[k], unweighted[k]) for k in expected)
    # after the last round the server's bottom is again the average of what came back
    last = [
        (e.payload[0], fed.rounds[1].per_client[e.client].samples)
        for e in fed.wire.select(direction="up", kind="model_state")
    ][3:]
    for name, tensor in fedavg(last).items():
        torch.testing.assert_close(fed.server.bottom_state[name], tensor)
    assert set(fed.server.model_state()) == {"bottom", "top"}


def test_a_client_that_drops_out_is_left_out_of_the_average():
    config = make_config(paradigm="splitfed_v2", clients=3, epochs=2, max_train_samples=288)
    fed = run(config, die_after={2: 1})
    for result in fed.rounds:
        assert result.dropped == ["c3"] and result.participants == ["c1", "c2"]
    uploads = [(e.payload[0], 96) for e in fed.wire.select(direction="up", kind="model_state")][-2:]
    for name, tensor in fedavg(uploads).items():
        torch.testing.assert_close(fed.server.bottom_state[name], tensor)


def test_slperf_names_and_the_adam_option():
    cfg = make_config(paradigm="SplitFed2")
    assert (cfg.paradigm, cfg.options["order"]) == ("splitfed_v2", "parallel")
    cfg = make_config(paradigm="SplitFed")
    assert (cfg.paradigm, cfg.options["order"]) == ("splitfed_v2", "sequential")
    with pytest.raises(ConfigError, match="order"):
        make_config(paradigm="splitfed_v2", order="random")
    config = make_config(paradigm="SplitFed", optim="adam", lr=0.001, max_train_samples=128)
    fed = run(config)
    assert isinstance(fed.server.optimizer, torch.optim.Adam)
    assert all(isinstance(c.optimizer, torch.optim.Adam) for c in fed.clients)
    assert fed.evals[0].samples == 200
