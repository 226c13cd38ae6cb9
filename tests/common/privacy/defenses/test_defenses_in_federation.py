"""Each defense in a small run of real paradigm halves over the in-process harness (MNIST, LeNet cut after its
first block, 2 clients, a few batches), against the attack that measures what it hides: the leakage figure moves
the right way against the same run undefended. And one simulated run (``backend: sim``, through the coordinator)
records which defense ran at which strength and the epsilon it gave, per round, beside the attacks' figures."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "paradigms"))
from sl_wire_harness import InProcessFederation, config_from  # noqa: E402

from slperf.common.data.registry import DATASETS  # noqa: E402
from slperf.common.privacy.defenses.accounting import activation_epsilon  # noqa: E402
from slperf.common.privacy.defenses.label_dp import keep_probability  # noqa: E402
from slperf.common.privacy.observations import GroundTruth  # noqa: E402
from slperf.common.privacy.observer import PrivacyObserver  # noqa: E402
from slperf.common.protocol.types import Phase  # noqa: E402
from slperf.common.wire.codec import decode_tensor  # noqa: E402

pytestmark = pytest.mark.slow

BASE = {
    "dataset": "mnist",
    "clients": 2,
    "epochs": 2,
    "batch_size": 64,
    "lr": 0.05,
    "max_train_samples": 512,
    "max_test_samples": 200,
    "eval_batch_size": 100,
    "seed": 0,
    "client_timeout": 60.0,
}


def figures(rounds: int, **overrides) -> tuple[InProcessFederation, list[dict]]:
    """The attacks' figures of each of ``rounds`` rounds."""
    config = config_from({**BASE, **overrides})

    async def main():
        async with InProcessFederation(config) as fed:
            dataset = DATASETS[config.dataset]
            observer = PrivacyObserver(config, tuple(dataset.input_shape), dataset.num_classes, None)
            for proxy in fed.proxies:
                proxy.observer = observer
            out = []
            for rnd in range(rounds):
                await fed.round(rnd)
                out.append(observer.finish_round(rnd))
            return fed, out

    return asyncio.run(main())


def test_nopeek_lowers_the_distance_correlation_the_server_measures():
    _, plain = figures(2, paradigm="vanilla", attacks=["dcor"])
    _, defended = figures(2, paradigm="vanilla", attacks=["dcor"], defenses={"nopeek": {"alpha": 5.0}})
    # round 2's first batches: after a round of training with the term (round 1's come before any step)
    assert defended[1]["dcor"] < plain[1]["dcor"] - 0.03, (plain[1]["dcor"], defended[1]["dcor"])


def test_activation_noise_lowers_the_distance_correlation_and_bounds_what_is_sent():
    _, plain = figures(1, paradigm="splitfed_v1", attacks=["dcor"])
    noise = {"activation_noise": {"clip": 1.0, "sigma": 1.0}}
    fed, defended = figures(1, paradigm="splitfed_v1", attacks=["dcor"], defenses=noise)
    assert defended[0]["dcor"] < plain[0]["dcor"] - 0.1, (plain[0]["dcor"], defended[0]["dcor"])
    sent = decode_tensor(fed.cut_tensors("c1", round=0, phase=Phase.TRAIN)[0].tensor)
    per_coordinate = float(sent.std())
    assert 0.9 < per_coordinate < 1.1  # what crossed is noise of std sigma * clip around a norm-1 signal


def test_label_dp_sends_flipped_labels_at_the_predicted_rate():
    epsilon = 1.0
    defended = {"epochs": 1, "paradigm": "vanilla", "defenses": {"label_dp": {"epsilon": epsilon}}}
    fed, _ = figures(1, **defended)
    config = config_from({**BASE, **defended})
    truth = GroundTruth(config)
    kept = total = 0
    for index, cid in enumerate(("c1", "c2")):
        batches = truth.batches(index, 0, list(range(8)))
        for message in fed.cut_tensors(cid, round=0, phase=Phase.TRAIN):
            sent = decode_tensor(message.labels)
            kept += int((sent == batches[message.ref.step][1]).sum())
            total += len(sent)
        for message in fed.cut_tensors(cid, round=0, phase=Phase.EVAL):  # evaluation labels go as they are
            assert message.HasField("labels")
    p = keep_probability(epsilon, 10)
    assert total == 512
    assert abs(kept - total * p) <= 5 * math.sqrt(total * p * (1 - p)), (kept, total * p)


def test_grad_perturb_moves_the_norm_attack_towards_chance():
    _, plain = figures(1, paradigm="ushaped", attacks=["label_leak"])
    _, defended = figures(1, paradigm="ushaped", attacks=["label_leak"], defenses={"grad_perturb": {}})
    before, after = plain[0]["label_norm_auc"], defended[0]["label_norm_auc"]
    assert abs(after - 0.5) < abs(before - 0.5) - 0.1, (before, after)


def test_a_simulated_defended_run_records_the_defenses_and_their_epsilon_per_round(tmp_path):
    from slperf.sim import simulate

    config = config_from(
        {
            **BASE,
            "paradigm": "vanilla",
            "backend": "sim",
            "attacks": ["dcor"],
            "defenses": {"activation_noise": {"sigma": 1.0}, "label_dp": {"epsilon": 2.0}},
        }
    )
    run, _ = simulate(config, tmp_path)
    folder = run.folder.path
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rnd, record in enumerate(records):
        assert record["defenses"] == config.defenses
        privacy = record["privacy"]
        assert {"dcor", "activation_epsilon", "label_epsilon"} <= set(privacy)
        for cid in record["per_client"]:
            spent = [(r["per_client"][cid]["samples"], 64) for r in records[: rnd + 1]]
            assert privacy["per_client"][cid]["activation_epsilon"] == pytest.approx(
                activation_epsilon(1.0, spent, 1e-5)
            )
        assert privacy["label_epsilon"] == 2.0
    assert records[1]["privacy"]["activation_epsilon"] > records[0]["privacy"]["activation_epsilon"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["defenses"] == config.defenses
    assert summary["privacy"]["activation_epsilon"] == records[-1]["privacy"]["activation_epsilon"]
    assert torch.isfinite(torch.tensor(summary["privacy"]["dcor"]))
