"""With one client and the same seed, split training over the real federation must end with the same
weights as plain single-process training of the unsplit model on the same batches (the project's correctness anchor)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from unsplit_reference import unsplit_training

from slperf.common.config_loader import load_config
from slperf.common.models import build_model
from slperf.common.security.credentials import operator_channel_credentials
from slperf.common.shards import build_client_data
from slperf.operator import OperatorClient
from slperf.slserver.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("paradigm", ["vanilla", "splitfed_v1"])
def test_one_client_split_training_equals_single_process(tmp_path, pki, daemons, paradigm):
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "paradigm": paradigm,
                "clients": 1,
                "client_ids": ["c1"],
                "epochs": 2,
                "batch_size": 32,
                "lr": 0.05,
                "max_train_samples": 320,
                "max_test_samples": 200,
                "seed": 3,
            }
        )
    )
    config, _ = load_config(cfg_path)
    runs = tmp_path / "runs"
    port = daemons.server(pki, runs)
    daemons.client(port, "c1", pki)
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    run_id = op.start_run(cfg_path.read_text())
    status = op.follow(run_id, lambda record: None)
    op.close()
    assert status.state == "finished", status.error + daemons.log("server")[-3000:]

    model = load_checkpoint(runs / run_id / "checkpoint.pt")["model"]
    expected = unsplit_training(config, build_client_data(config, 0))
    bottom_len = len(model["bottom"])
    split_weights = {
        **{k: v for k, v in model["bottom"].items()},
        **{f"{int(k.split('.')[0]) + config.split_layer}.{k.split('.', 1)[1]}": v for k, v in model["top"].items()},
    }
    assert bottom_len > 0
    assert set(split_weights) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(split_weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # And training did move the weights (the comparison is not between two untouched inits).
    init = build_model(config.model, (1, 28, 28), 10, config.seed).state_dict()
    assert any(not torch.allclose(init[k], expected[k]) for k in expected)
    assert json.loads(status.summary_json)["rounds"] == 2
