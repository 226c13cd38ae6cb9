"""RunConfig's core keys: defaults, SLPerf aliases, strict types and ranges.

(config.py, below the paradigms and data.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from slperf.common.config import ConfigError, RunConfig, check_ranges, parse_core_keys
from slperf.common.config_loader import load_config_text


def test_defaults_and_slperf_aliases():
    cfg, warnings = load_config_text(
        "variants_type: vanilla\nclient_number: 4\ndataDir: /data\nlog_step: 10\nepochs: 2\n"
    )
    assert (cfg.paradigm, cfg.clients, cfg.data_dir, cfg.epochs) == ("vanilla", 4, "/data", 2)
    assert cfg.batch_size == RunConfig().batch_size
    assert any("log_step" in w for w in warnings)


@pytest.mark.parametrize(
    "text,key",
    [
        ("lr: fast\n", "lr"),
        ("epochs: 2.5\n", "epochs"),
        ("clients: true\n", "clients"),
        ("equal_size: 1\n", "equal_size"),
        ("client_ids: c1\n", "client_ids"),
        ("lr: .nan\n", "lr"),
    ],
)
def test_ill_typed_values_are_named(text, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config_text(text)


@pytest.mark.parametrize(
    "text,key",
    [
        ("clients: 0\n", "clients"),
        ("lr: -1\n", "lr"),
        ("momentum: 1.5\n", "momentum"),
        ("clients: 2\nclient_ids: [a, a]\n", "client_ids"),
        ("clients: 3\nclient_ids: [a, b]\n", "client_ids"),
    ],
)
def test_out_of_range_values(text, key):
    with pytest.raises(ConfigError, match=key):
        load_config_text(text)


def test_alias_and_canonical_key_together_is_an_error():
    with pytest.raises(ConfigError, match="twice"):
        load_config_text("clients: 2\nclient_number: 3\n")


def test_run_config_module_imports_neither_the_paradigms_nor_the_data_layer():
    # config.py is below both layers; resolving paradigm options and data set names is config_loader's job.
    script = (
        "import sys, slperf.common.config; "
        "print(sorted(m for m in sys.modules if m.startswith(('slperf.common.paradigms', 'slperf.common.data'))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_core_keys_are_parsed_apart_from_the_keys_a_paradigm_must_claim():
    cfg, extra, warnings = parse_core_keys({"client_number": 2, "thred": 3, "log_step": 1, "lr": 1})
    assert (cfg.clients, cfg.lr, extra) == (2, 1.0, {"thred": 3})
    assert isinstance(cfg.lr, float) and warnings == [
        "ignoring SLPerf key 'log_step' (it has no meaning in a gRPC federation)"
    ]
    with pytest.raises(ConfigError, match="mapping"):
        parse_core_keys(["a"])  # type: ignore[arg-type]


def test_range_checks_take_the_known_data_set_names():
    check_ranges(RunConfig(dataset="toy"), {"toy"})
    with pytest.raises(ConfigError, match="unknown dataset 'mnist' \\(known: toy\\)"):
        check_ranges(RunConfig(), {"toy"})


def test_aggregation_is_for_paradigms_that_average_and_trim_fraction_for_trimmed_mean_only():
    from slperf.common.config import ConfigError as Error
    from slperf.common.config_loader import config_from_mapping as load

    for paradigm in ("splitfed_v1", "splitfed_v2", "fedavg"):
        cfg, _ = load({"paradigm": paradigm, "aggregation": "trimmed_mean", "trim_fraction": 0.25})
        assert (cfg.aggregation, cfg.trim_fraction) == ("trimmed_mean", 0.25)
    assert load({"paradigm": "fedavg", "aggregation": "median"})[0].aggregation == "median"
    with pytest.raises(Error, match="'aggregation' applies to paradigms that average"):
        load({"paradigm": "vanilla", "aggregation": "median"})
    with pytest.raises(Error, match="'trim_fraction' applies to paradigms that average"):
        load({"paradigm": "psl", "trim_fraction": 0.1})
    with pytest.raises(Error, match="trimmed_mean only"):
        load({"paradigm": "fedavg", "aggregation": "median", "trim_fraction": 0.1})
    with pytest.raises(Error, match=r"\[0, 0.5\)"):
        load({"paradigm": "fedavg", "aggregation": "trimmed_mean", "trim_fraction": 0.5})
    with pytest.raises(Error, match="must be one of"):
        load({"paradigm": "fedavg", "aggregation": "krum"})
    with pytest.raises(Error, match="phase_timeout"):
        load({"phase_timeout": 0})


def test_a_launcher_sends_the_server_its_config_without_its_own_keys():
    from slperf.common.config import LAUNCHER_KEYS, RunConfig

    config = RunConfig(network={"rate_mbit": 10}, client_image="slperf:latest", client_resources={"cpus": 0.5})
    assert config.launcher_keys_set() == list(LAUNCHER_KEYS)
    sent = config.for_server()
    assert RunConfig(**sent).launcher_keys_set() == [] and sent["paradigm"] == config.paradigm
