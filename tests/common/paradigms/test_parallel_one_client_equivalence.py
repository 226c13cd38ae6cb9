"""The one-client equivalence anchor for the parallel paradigms: with one client and the same seed and
batches, psl (every server_update, also under SLPerf's names), sglr, splitfed_v2 (both orders) and fedavg
end with the same weights as plain single-process training of the unsplit model (up to float round-off).

In-process (parallel_fakes) for speed; the same halves run over gRPC in the *_e2e tests."""

from __future__ import annotations

import pytest
import torch
from parallel_fakes import client_data, make_config, run
from unsplit_reference import unsplit_training

from slperf.common.models import build_model


def split_weights(config, fed) -> dict[str, torch.Tensor]:
    """The federation's final model under the unsplit model's parameter names."""
    if config.paradigm == "fedavg":
        return dict(fed.server.global_state)
    bottom = fed.clients[0].bottom.state_dict()
    top = fed.server.top.state_dict()
    shifted = {f"{int(k.split('.')[0]) + config.split_layer}.{k.split('.', 1)[1]}": v for k, v in top.items()}
    return {**bottom, **shifted}


CASES = [
    ("psl", {"server_update": "arrival"}),
    ("psl", {"server_update": "sum"}),
    ("psl", {"server_update": "lockstep"}),
    ("asy_vanilla2", {}),
    ("synchronization", {}),
    ("sglr", {}),  # one client: the mean over the averaging set is its own gradient, and N^alpha = 1
    ("splitfed_v2", {"order": "parallel"}),
    ("splitfed_v2", {"order": "sequential"}),
    ("fedavg", {}),
]


@pytest.mark.parametrize("paradigm,options", CASES, ids=[f"{p}-{'-'.join(map(str, o.values()))}" for p, o in CASES])
def test_one_client_equals_single_process_training(paradigm, options):
    config = make_config(paradigm=paradigm, clients=1, epochs=2, max_train_samples=192, batch_size=32, **options)
    fed = run(config)
    got = split_weights(config, fed)
    expected = unsplit_training(config, client_data(config, 0))
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    init = build_model(config.model, (1, 28, 28), 10, config.seed).state_dict()
    assert any(not torch.allclose(init[k], expected[k]) for k in expected)  # training moved the weights
    # and the server kept what the client holds (checkpoints hold the whole model)
    if paradigm.startswith(("psl", "asy", "sync", "sglr")):
        for name, tensor in fed.clients[0].bottom.state_dict().items():
            torch.testing.assert_close(fed.server.bottoms["c1"][name], tensor)
