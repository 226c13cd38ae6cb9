from __future__ import annotations

import subprocess
import sys

import pytest

from slperf.common.config import ConfigError, RunConfig
from slperf.common.config_loader import config_from_json, load_config, load_config_text


def test_defaults_and_slperf_aliases():
    cfg, warnings = load_config_text(
        "variants_type: vanilla\nclient_number: 4\ndataDir: /data\nlog_step: 10\nepochs: 2\n")
    assert (cfg.paradigm, cfg.clients, cfg.data_dir, cfg.epochs) == ("vanilla", 4, "/data", 2)
    assert cfg.batch_size == RunConfig().batch_size
    assert any("log_step" in w for w in warnings)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="partition_alfa"):
        load_config_text("partition_alfa: 0.5\n")


@pytest.mark.parametrize("text,key", [("lr: fast\n", "lr"), ("epochs: 2.5\n", "epochs"), ("clients: true\n", "clients"),
                                      ("equal_size: 1\n", "equal_size"), ("client_ids: c1\n", "client_ids"),
                                      ("lr: .nan\n", "lr")])
def test_ill_typed_values_are_named(text, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config_text(text)


@pytest.mark.parametrize("text,key", [("clients: 0\n", "clients"), ("lr: -1\n", "lr"), ("momentum: 1.5\n", "momentum"),
                                      ("clients: 2\nclient_ids: [a, a]\n", "client_ids"),
                                      ("clients: 3\nclient_ids: [a, b]\n", "client_ids")])
def test_out_of_range_values(text, key):
    with pytest.raises(ConfigError, match=key):
        load_config_text(text)


def test_unknown_paradigm_lists_known_ones():
    with pytest.raises(ConfigError, match="splitfed_v1"):
        load_config_text("paradigm: nope\n")


def test_alias_and_canonical_key_together_is_an_error():
    with pytest.raises(ConfigError, match="twice"):
        load_config_text("clients: 2\nclient_number: 3\n")


def test_broken_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_text("- a\n- b\n")


def test_json_round_trip_is_identical():
    cfg, _ = load_config_text("paradigm: vanilla\nclients: 2\nmax_train_samples: 100\n")
    assert config_from_json(cfg.to_json()) == cfg


def test_run_config_module_imports_neither_the_paradigms_nor_the_data_layer():
    # config.py is below both layers; resolving paradigm options and data set names is config_loader's job.
    script = ("import sys, slperf.common.config; "
              "print(sorted(m for m in sys.modules if m.startswith(('slperf.common.paradigms', 'slperf.common.data'))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_dataset_is_checked_against_the_data_registry():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*mnist"):
        load_config_text("dataset: imagenet\n")
