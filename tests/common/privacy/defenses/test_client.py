"""The client-side composition: no defenses leaves every tensor as it was (the same objects), and the shard
positions it gives a batch are the positions the loader took that batch's samples from."""

from __future__ import annotations

import torch

from slperf.common.config_loader import config_from_mapping
from slperf.common.privacy.defenses.client import ClientDefenses
from slperf.common.shards import build_client_data


def client(defenses: dict) -> tuple[ClientDefenses, object]:
    config, _ = config_from_mapping(
        {"paradigm": "vanilla", "clients": 2, "max_train_samples": 300, "batch_size": 32, "defenses": defenses}
    )
    data = build_client_data(config, 0)
    return ClientDefenses(config, data.train, data.num_classes, key=7), data


def test_no_defenses_change_nothing():
    defenses, _ = client({})
    assert not defenses
    x, acts, y = torch.randn(4, 3), torch.randn(4, 2), torch.tensor([0, 1, 2, 3])
    out = defenses.release(x, acts, y, 0, 0)
    assert out.activations is acts and out.labels is y and out.penalty is None
    g = torch.randn(4, 2)
    assert defenses.gradient(g) is g


def test_a_batchs_positions_are_where_its_samples_came_from():
    defenses, data = client({"label_dp": {"epsilon": 50.0}})  # keeps every label (up to e^-50)
    labels = torch.from_numpy(data.train._y if data.train._rows is None else data.train._y[data.train._rows])
    for step, (_, y) in enumerate(data.train.batches(1)):
        assert torch.equal(labels[defenses.positions(1, step)], y)
        assert torch.equal(defenses.release(torch.zeros(len(y), 1), torch.zeros(len(y), 1), y, 1, step).labels, y)


def test_evaluation_activations_go_through_the_same_clipping_and_noise_as_training():
    """The top is trained on clipped activations: evaluation batches sent unclipped (~10x the scale) were scored at
    chance, and reached the server undefended."""
    defenses, _ = client({"activation_noise": {"clip": 1.0, "sigma": 0.01}})
    acts = 10 * torch.randn(32, 864)  # one batch of the config's 32
    sent = defenses.release_eval(acts)
    assert sent.shape == acts.shape and not torch.equal(sent, acts)
    norms = sent.norm(dim=1)
    assert float(norms.max()) < 1.0 + 0.01 * 864**0.5 * 3  # the clip plus at most three sigmas of noise
    trained = defenses.release(torch.zeros(32, 1), acts, torch.zeros(32, dtype=torch.long), 0, 0).activations
    assert abs(float(trained.norm(dim=1).mean()) - float(norms.mean())) < 0.1  # the same scale as training's


def test_the_servers_model_of_the_channel_is_the_clip_without_the_noise():
    from slperf.common.privacy.defenses.client import public_release

    acts = 10 * torch.randn(8, 864)
    noisy, _ = config_from_mapping({"paradigm": "vanilla", "defenses": {"activation_noise": {"sigma": 1.0}}})
    clipped = public_release(noisy)(acts)
    assert torch.allclose(clipped.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(public_release(noisy)(acts), clipped)  # deterministic: no noise in it
    nopeek, _ = config_from_mapping({"paradigm": "vanilla", "defenses": {"nopeek": {"alpha": 1.0}}})
    assert public_release(nopeek)(acts) is acts
