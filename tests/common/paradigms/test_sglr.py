"""sglr: lock-step; a seeded random fraction of clients get the mean cut-layer gradient, the rest their own;
one server step per round of batches with lr x N^alpha; the top's gradients zeroed every step."""

from __future__ import annotations

import pytest
import torch
from parallel_fakes import count_calls, make_config, run

from slperf.common.config import ConfigError
from slperf.common.paradigms.sglr import averaging_set, split_average


def _steps(store):
    def setup(fed):
        store["steps"] = count_calls(fed.server.optimizer, "step")
        store["zero"] = count_calls(fed.server.optimizer, "zero_grad")

    return setup


def test_the_active_fraction_receives_the_mean_of_their_gradients_the_rest_their_own():
    config = make_config(paradigm="sglr", clients=4, max_train_samples=384, splitavg_active=0.5)
    store = {}
    fed = run(config, setup=_steps(store), evaluate=False)
    # the server's own per-client cut-layer gradients, in client order, as it computed them
    own = [out.grad for out in fed.ctx.results("top_accumulate")]
    steps = 3
    assert len(own) == 4 * steps
    for step in range(steps):
        own_step = own[4 * step : 4 * step + 4]
        sent = [fed.wire.select(client=c.client_id, kind="cut_reply")[step].payload.tensor for c in fed.conns]
        active = averaging_set(config.seed, 0, step, 4, 0.5)
        assert len(active) == 2
        mean = torch.stack([own_step[i] for i in active]).mean(0)
        for i in range(4):
            torch.testing.assert_close(sent[i], mean if i in active else own_step[i])
        assert not torch.allclose(own_step[active[0]], own_step[active[1]])  # averaging did something
    # the set is random per step, and the same on a rerun (seeded by config.seed, round, step)
    sets = {tuple(averaging_set(config.seed, r, s, 4, 0.5)) for r in range(3) for s in range(10)}
    assert len(sets) > 1
    assert averaging_set(7, 1, 2, 5, 0.5) == averaging_set(7, 1, 2, 5, 0.5)
    assert store["steps"][0] == steps  # one server step per round of client batches
    assert store["zero"][0] >= steps  # gradients zeroed before every step


def test_server_lr_is_scaled_by_clients_to_the_alpha_and_clients_keep_lr():
    config = make_config(paradigm="sglr", clients=4, lr=0.01, splitlr_alpha=0.5)
    fed = run(config, evaluate=False)
    assert fed.server.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 4**0.5)
    assert all(c.optimizer.param_groups[0]["lr"] == pytest.approx(0.01) for c in fed.clients)


def test_without_averaging_or_acceleration_it_is_psl_sum_so_gradients_never_accumulate_across_steps():
    # SLPerf never zeroed the top's gradients: every step would then differ from psl sum's.
    base = dict(clients=3, epochs=2, max_train_samples=288)
    a = run(make_config(paradigm="sglr", splitavg_active=0.0, splitlr_alpha=0.0, **base), evaluate=False)
    b = run(make_config(paradigm="psl_sum", **base), evaluate=False)
    for (name, x), (_, y) in zip(a.server.top.state_dict().items(), b.server.top.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)
    for ca, cb in zip(a.clients, b.clients):
        for name, x in ca.bottom.state_dict().items():
            torch.testing.assert_close(x, cb.bottom.state_dict()[name], msg=name)


def test_everyone_averaged_gets_one_gradient():
    config = make_config(paradigm="sglr", clients=3, max_train_samples=192, splitavg_active=1.0)
    fed = run(config, evaluate=False)
    for step in range(2):
        sent = [fed.wire.select(client=c.client_id, kind="cut_reply")[step].payload.tensor for c in fed.conns]
        assert torch.equal(sent[0], sent[1]) and torch.equal(sent[1], sent[2])


def test_split_average_pairs_only_equal_shapes_and_rounds_half_up():
    grads = [torch.ones(4, 2), 3 * torch.ones(4, 2), 5 * torch.ones(3, 2), torch.zeros(4, 2)]
    out = split_average(grads, [0, 1, 2])
    assert torch.equal(out[0], 2 * torch.ones(4, 2)) and torch.equal(out[1], 2 * torch.ones(4, 2))
    assert torch.equal(out[2], grads[2])  # no partner of its shape: its own
    assert torch.equal(out[3], grads[3])  # not in the set
    assert split_average(grads, []) == grads
    assert len(averaging_set(0, 0, 0, 3, 0.5)) == 2  # 1.5 -> 2
    assert len(averaging_set(0, 0, 0, 5, 0.5)) == 3  # 2.5 -> 3 (half-up, not banker's)
    assert len(averaging_set(0, 0, 0, 3, 0.1)) == 0


def test_slperf_keys_are_accepted():
    cfg = make_config(paradigm="SGLR", SGLR_splitAvg_active=0.25, SGLR_splitLR_alpha=1)
    assert cfg.paradigm == "sglr"
    assert cfg.options == {"splitavg_active": 0.25, "splitlr_alpha": 1.0}
    with pytest.raises(ConfigError, match="splitavg_active"):
        make_config(paradigm="sglr", splitavg_active=1.5)
