"""psl: one shared top, per-client bottoms never averaged; server_update arrival | sum | lockstep.

The in-memory federation (parallel_fakes) runs the real server half against real BottomClients and logs
what crosses the wire; the tests replay the server's updates from the logged activations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from parallel_fakes import client_data, count_calls, make_config, run

from slperf.common.config import ConfigError
from slperf.common.paradigms.kit.steps import make_optimizer, top_train_step


def _snapshot_top(store: dict):
    def setup(fed):
        store["top"] = copy.deepcopy(fed.server.top)
        store["steps"] = count_calls(fed.server.optimizer, "step")

    return setup


def _acts(fed, client):
    return [e.payload for e in fed.wire.select(client=client, direction="up", kind="cut_tensor")]


def _grads(fed, client):
    return [e.payload for e in fed.wire.select(client=client, direction="down", kind="cut_reply")]


def _assert_same_module(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_sum_takes_one_step_per_round_of_client_batches_on_the_summed_loss():
    store = {}
    config = make_config(paradigm="psl", server_update="sum", clients=3, max_train_samples=288, batch_size=32)
    fed = run(config, setup=_snapshot_top(store), evaluate=False)
    per_client = [len(_acts(fed, c.client_id)) for c in fed.conns]
    assert per_client == [3, 3, 3]
    assert store["steps"][0] == 3  # 9 client batches, 3 rounds of batches, 3 optimiser steps

    # Replay: per round of batches, sum the clients' losses on the same top, one step.
    top = store["top"]
    opt = make_optimizer(top.parameters(), config)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        for conn in fed.conns:
            batch = _acts(fed, conn.client_id)[step]
            acts = batch.tensor.clone().requires_grad_(True)
            F.cross_entropy(top(acts), batch.labels).backward()
            # every client gets the gradient of its own loss, taken before the step
            torch.testing.assert_close(_grads(fed, conn.client_id)[step].tensor, acts.grad)
        opt.step()
    _assert_same_module(top, fed.server.top)


def test_lockstep_steps_after_each_client_in_turn():
    store = {}
    config = make_config(paradigm="psl", server_update="lockstep", clients=3, max_train_samples=192)
    fed = run(config, setup=_snapshot_top(store), evaluate=False)
    assert store["steps"][0] == 6  # one step per client batch
    top = store["top"]
    opt = make_optimizer(top.parameters(), config)
    for step in range(2):
        for conn in fed.conns:  # client order within a round of batches
            batch = _acts(fed, conn.client_id)[step]
            out = top_train_step(top, opt, batch.tensor, batch.labels)
            torch.testing.assert_close(_grads(fed, conn.client_id)[step].tensor, out.grad)
    _assert_same_module(top, fed.server.top)
    # lock-step: every client's step-0 reply goes out before any step-1 reply, in client order
    served = fed.wire.select(direction="down", kind="cut_reply")
    assert [(e.payload.ref.step, e.client) for e in served] == [
        (0, "c1"),
        (0, "c2"),
        (0, "c3"),
        (1, "c1"),
        (1, "c2"),
        (1, "c3"),
    ]


def test_arrival_steps_once_per_batch_in_arrival_order_with_clients_interleaved():
    store = {}
    config = make_config(paradigm="psl", clients=2, max_train_samples=256)
    fed = run(config, setup=_snapshot_top(store), evaluate=False)
    assert config.options["server_update"] == "arrival"
    served = fed.wire.select(direction="down", kind="cut_reply")
    assert store["steps"][0] == len(served) == 8
    order = [e.client for e in served]
    assert order.index("c2") < len(order) - 1 - order[::-1].index("c1")  # interleaved, not client by client
    # Replay in the order the server answered: one step per batch on the one top.
    top = store["top"]
    opt = make_optimizer(top.parameters(), config)
    for entry in served:
        batch = _acts(fed, entry.client)[entry.payload.ref.step]
        out = top_train_step(top, opt, batch.tensor, batch.labels)
        torch.testing.assert_close(entry.payload.tensor, out.grad)
    _assert_same_module(top, fed.server.top)


@pytest.mark.parametrize("mode", ["arrival", "sum", "lockstep"])
def test_bottoms_are_never_averaged_and_come_back_to_their_own_client(mode):
    config = make_config(paradigm="psl", server_update=mode, clients=2, epochs=2, max_train_samples=128)
    fed = run(config)
    for conn in fed.conns:
        ups = [e.payload[0] for e in fed.wire.select(client=conn.client_id, direction="up", kind="model_state")]
        downs = [e.payload[1] for e in fed.wire.select(client=conn.client_id, direction="down", kind="model_state")]
        assert len(ups) == 2
        # round 1 and the round-1 evaluation start from the bottom this client returned, not an average
        for name in ups[0]:
            torch.testing.assert_close(downs[1][name], ups[0][name])
            torch.testing.assert_close(downs[2][name], ups[0][name])
        # the server's kept bottom is the client's live one
        for name, tensor in conn.paradigm.bottom.state_dict().items():
            torch.testing.assert_close(fed.server.bottoms[conn.client_id][name], tensor)
    a, b = (fed.server.bottoms[c.client_id] for c in fed.conns)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # every client evaluates through its own bottom; the figure pools them
    per_client = fed.evals[-1].extra["test_accuracy_per_client"]
    assert set(per_client) == {"c1", "c2"}
    assert fed.evals[-1].samples == 2 * 200
    assert fed.evals[-1].accuracy == pytest.approx(sum(per_client.values()) / 2)


@pytest.mark.parametrize("paradigm", ["psl_sum", "psl_lockstep", "sglr"])
def test_lockstep_modes_finish_with_unequal_shards(paradigm):
    config = make_config(
        paradigm=paradigm,
        clients=3,
        partition_method="hetero",
        partition_alpha=0.1,
        max_train_samples=400,
        batch_size=32,
    )
    sizes = [client_data(config, i).train.num_samples for i in range(3)]
    assert len(set(sizes)) == 3, sizes  # the point of the test: shards differ
    store = {}
    fed = run(config, setup=_snapshot_top(store))
    batches = [math.ceil(n / 32) for n in sizes]
    result = fed.rounds[0]
    assert result.dropped == [] and sorted(result.participants) == ["c1", "c2", "c3"]
    assert [result.per_client[c.client_id].steps for c in fed.conns] == batches
    assert [result.per_client[c.client_id].samples for c in fed.conns] == sizes
    expected_steps = sum(batches) if paradigm == "psl_lockstep" else max(batches)
    assert store["steps"][0] == expected_steps
    assert fed.evals[0].samples == 3 * 200


@pytest.mark.parametrize("mode", ["arrival", "sum", "lockstep"])
def test_a_client_that_drops_out_does_not_stop_the_others(mode):
    config = make_config(paradigm="psl", server_update=mode, clients=3, epochs=2, max_train_samples=384)
    fed = run(config, die_after={1: 2})
    for result in fed.rounds:
        assert result.dropped == ["c2"]
        assert sorted(result.participants) == ["c1", "c3"]
        assert all(result.per_client[c].steps == 4 for c in ("c1", "c3"))
    assert fed.evals[-1].samples == 2 * 200
    assert set(fed.evals[-1].extra["test_accuracy_per_client"]) == {"c1", "c3"}


def test_slperf_names_select_the_server_update():
    cfg = make_config(paradigm="asy_vanilla")
    assert (cfg.paradigm, cfg.options["server_update"]) == ("psl", "arrival")
    cfg = make_config(paradigm="asy_vanilla2")
    assert (cfg.paradigm, cfg.options["server_update"]) == ("psl", "sum")
    cfg = make_config(paradigm="synchronization")
    assert (cfg.paradigm, cfg.options["server_update"]) == ("psl", "lockstep")
    assert make_config(paradigm="psl", options={"server_update": "sum"}).options["server_update"] == "sum"
    with pytest.raises(ConfigError, match="server_update"):
        make_config(paradigm="psl", server_update="fifo")
    with pytest.raises(ConfigError, match="server_update"):
        make_config(paradigm="asy_vanilla2", server_update="arrival")


def test_checkpoint_state_round_trips():
    config = make_config(paradigm="psl", server_update="sum", clients=2, max_train_samples=128)
    fed = run(config, evaluate=False)
    state = fed.server.state_dict()
    other = type(fed.server)(config, fed.ctx, 10, (1, 28, 28))
    other.load_state_dict(state)
    _assert_same_module(other.top, fed.server.top)
    assert set(other.bottoms) == {"c1", "c2"}
    assert set(fed.server.model_state()) == {"top", "bottom/c1", "bottom/c2"}
