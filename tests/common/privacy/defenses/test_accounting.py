"""The activation noise's epsilon is exactly what a direct Opacus call gives for the same steps; the figures of a
run (per client, worst case, label epsilon) come from its records and merge beside the attacks'."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

from slperf.common.config_loader import config_from_mapping
from slperf.common.privacy.defenses.accounting import activation_epsilon, defense_figures, merge_figures


def test_the_epsilon_is_opacus_rdp_accountants_for_the_same_steps():
    direct = RDPAccountant()
    for _ in range(2):  # two rounds of a 1000-sample shard in batches of 64: 16 steps each at rate 0.064
        for _ in range(16):
            direct.step(noise_multiplier=0.8, sample_rate=64 / 1000)
    expected = direct.get_epsilon(delta=1e-5)
    assert activation_epsilon(0.8, [(1000, 64), (1000, 64)], 1e-5) == pytest.approx(expected, rel=1e-9)
    assert activation_epsilon(0.8, [(1000, 64)], 1e-5) < expected  # fewer steps, less spent
    assert activation_epsilon(2.0, [(1000, 64)], 1e-5) < activation_epsilon(0.8, [(1000, 64)], 1e-5)
    assert activation_epsilon(0.8, [(0, 64)], 1e-5) == 0.0  # a client that sat out sent nothing


def test_a_runs_figures_per_client_worst_case_and_label_epsilon():
    config, _ = config_from_mapping(
        {
            "paradigm": "vanilla",
            "batch_size": 50,
            "defenses": {"activation_noise": {"sigma": 1.0}, "label_dp": {"epsilon": 2.0}},
        }
    )
    records = [
        {"per_client": {"a": {"samples": 500}, "b": {"samples": 1000}}},
        {"per_client": {"a": {"samples": 500}, "b": {"samples": 0}}},
    ]
    figures = defense_figures(config, records)
    a = activation_epsilon(1.0, [(500, 50), (500, 50)], 1e-5)
    b = activation_epsilon(1.0, [(1000, 50), (0, 50)], 1e-5)
    assert figures["per_client"] == {"a": {"activation_epsilon": a}, "b": {"activation_epsilon": b}}
    assert figures["activation_epsilon"] == max(a, b)
    assert figures["label_epsilon"] == 2.0
    merged = merge_figures({"dcor": 0.5, "per_client": {"a": {"dcor": 0.4}}}, figures)
    assert merged["dcor"] == 0.5 and merged["label_epsilon"] == 2.0
    assert merged["per_client"]["a"] == {"dcor": 0.4, "activation_epsilon": a}
