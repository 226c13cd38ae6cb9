"""The client's training state on disk: momentum survives a restart, exactly, and a bad file is a fresh start."""

from __future__ import annotations

import logging

import torch

from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms.kit.bottom_client import BottomClient
from slperf.common.shards import build_client_data
from slperf.slclient.state_store import SetupKey, Snapshot, StateStore


def _client(momentum: float = 0.9) -> tuple[BottomClient, SetupKey]:
    config, _ = config_from_mapping(
        {"paradigm": "vanilla", "clients": 1, "max_train_samples": 64, "max_test_samples": 32, "momentum": momentum}
    )
    client = BottomClient(config, 0, 1, build_client_data(config, 0))
    return client, SetupKey("r1", config.to_json(), 0, 1)


def _step(client: BottomClient, seed: int) -> None:
    """One optimiser step of the bottom with a gradient from a fixed upstream tensor."""
    x, _ = next(iter(client.data.train.batches(seed)))
    acts = client.bottom(x)
    client.optimizer.zero_grad(set_to_none=True)
    acts.backward(torch.ones_like(acts) * 0.01)
    client.optimizer.step()


def test_momentum_survives_a_restart_exactly(tmp_path):
    uninterrupted, key = _client()
    restarted, _ = _client()
    store = StateStore(tmp_path, "c1")
    for seed in (0, 1):
        _step(uninterrupted, seed)
        _step(restarted, seed)
    store.save(key, Snapshot(2, restarted.training_state(), torch.get_rng_state()))
    del restarted

    fresh, _ = _client()  # a new daemon process: fresh weights and no momentum
    assert not fresh.optimizer.state_dict()["state"]
    snapshot = store.load(key, 2)
    assert snapshot is not None and snapshot.rng is not None
    fresh.load_training_state(snapshot.state)
    restored, reference = fresh.optimizer.state_dict()["state"], uninterrupted.optimizer.state_dict()["state"]
    assert restored.keys() == reference.keys() and restored
    for i in reference:
        assert torch.equal(restored[i]["momentum_buffer"], reference[i]["momentum_buffer"])
    _step(uninterrupted, 2)
    _step(fresh, 2)
    for a, b in zip(uninterrupted.bottom.state_dict().values(), fresh.bottom.state_dict().values()):
        assert torch.equal(a, b)  # same ops on the same bits: exact


def test_without_the_saved_momentum_the_next_step_differs(tmp_path):
    """The control: what the test above would see if the momentum were lost (as before)."""
    uninterrupted, _ = _client()
    for seed in (0, 1):
        _step(uninterrupted, seed)
    fresh, _ = _client()
    fresh.bottom.load_state_dict(uninterrupted.bottom.state_dict())  # the server pushes the weights, not momentum
    _step(uninterrupted, 2)
    _step(fresh, 2)
    assert any(not torch.equal(a, b) for a, b in zip(uninterrupted.bottom.parameters(), fresh.bottom.parameters()))


def test_an_unreadable_or_foreign_state_file_is_a_fresh_start_with_a_log_line(tmp_path, caplog):
    client, key = _client()
    store = StateStore(tmp_path, "c1")
    store.save(key, Snapshot(1, client.training_state()))
    other = SetupKey("r1", key.config_json + " ", 0, 1)  # the same run id, another config
    with caplog.at_level(logging.WARNING, logger="slperf.client"):
        assert store.load(other, 1) is None
        assert "another set-up (config_sha256 differ)" in caplog.text
        store.path("r1", 1).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        assert store.load(key, 1) is None
        assert "unreadable" in caplog.text
    assert store.load(key, 5) is None  # nothing saved for that round: no log line needed


def test_a_state_that_does_not_fit_the_client_is_refused_and_changes_nothing(tmp_path):
    client, _ = _client()
    _step(client, 0)
    state = client.training_state()
    other, _ = _client(momentum=0.5)
    before = {k: v.clone() for k, v in other.bottom.state_dict().items()}
    state.tensors["segment/bottom/0.weight"] = torch.zeros(3)
    import pytest

    with pytest.raises(ValueError, match="0.weight"):
        other.load_training_state(state)
    assert all(torch.equal(before[k], v) for k, v in other.bottom.state_dict().items())
    assert not other.optimizer.state_dict()["state"]


def test_only_the_two_latest_rounds_are_kept_and_a_finished_run_is_removed(tmp_path):
    client, key = _client()
    store = StateStore(tmp_path, "c1")
    for round in range(4):
        store.save(key, Snapshot(round, client.training_state()))
    assert store.rounds("r1") == [2, 3]
    store.discard("r1")
    assert store.rounds("r1") == [] and not (tmp_path / "runs" / "r1").exists()
