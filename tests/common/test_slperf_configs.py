"""SLPerf's own config.yaml, every key with its shipped value, for every paradigm alias: the config check passes,
another paradigm's keys are ignored with a warning naming that paradigm, a truly unknown key stays an error, the
multi-task list-valued ``dataset`` is ``task_datasets``, and ``dataDir: ./data/`` with ``download: true`` is filled
from the pinned offline copy once and read from there afterwards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_mapping
from slperf.common.data import load_dataset
from slperf.common.paradigms import registry

SHIPPED = Path(__file__).parent / "slperf_configs" / "config.yaml"
# Option -> the paradigm that declares it, for the keys of the shipped file that are some paradigm's option.
OWNERS = {
    "thred": "async",
    "SGLR_splitAvg_active": "sglr",
    "SGLR_splitLR_alpha": "sglr",
    "client_split": "multitask",
    "cut_layer_vertical_list": "vertical",
    "data_vertical_list": "vertical",
}
ALIASES = sorted(set(registry.variant_names()) | set(registry._ALIASES))


def shipped(**overrides: Any) -> dict[str, Any]:
    return {**yaml.safe_load(SHIPPED.read_text()), **overrides}


@pytest.mark.parametrize("alias", ALIASES)
def test_slperfs_shipped_file_passes_the_config_check_for_every_paradigm_alias(alias):
    # SLPerf sets client_number from the MPI world size; a vertical run needs one party per data_vertical_list entry.
    overrides = {"client_number": 3} if registry.get(alias).name == "vertical" else {}
    config, warnings = config_from_mapping(shipped(variants_type=alias, **overrides))
    assert config.paradigm == registry.get(alias).name
    assert (config.model, config.data_dir, config.download, config.device) == ("lenet", "./data/", True, "cpu")
    for key, owner in OWNERS.items():
        message = f"ignoring '{key}': it is an option of the {owner} paradigm, not of {config.paradigm}"
        if key == "data_vertical_list":
            message = f"ignoring 'data_vertical_list': it belongs to the vertical paradigm, not to {config.paradigm}"
        assert (message in warnings) == (owner != config.paradigm), (key, warnings)
    assert any("device: gpu" in w for w in warnings)


def test_a_key_no_paradigm_declares_stays_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'thredd'"):
        config_from_mapping(shipped(variants_type="vanilla", thredd=0.1))


def test_a_list_valued_dataset_is_the_multitask_task_datasets():
    config, _ = config_from_mapping(
        shipped(variants_type="TaskAgnostic", dataset=["mnist", "fashionmnist"], client_number=5)
    )
    assert config.dataset == "mnist" and config.options["task_datasets"] == ["mnist", "fashionmnist"]
    with pytest.raises(ConfigError, match="give the list once"):
        config_from_mapping(shipped(variants_type="TaskAgnostic", dataset=["mnist"], task_datasets=["mnist"]))


@pytest.mark.slow  # starts a Python process of its own
def test_download_fills_an_empty_data_dir_from_the_pinned_copy_once(tmp_path, caplog):
    folder = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="slperf.data"):
        first = load_dataset("mnist", folder, tmp_path / "cache", download=True)
        second = load_dataset("mnist", folder, tmp_path / "cache", download=True)
    filled = [r.getMessage() for r in caplog.records if "filled it from the pinned offline copy" in r.getMessage()]
    assert len(filled) == 1 and str(folder) in filled[0]  # said once: the second load finds the files
    assert sorted(p.name for p in folder.iterdir()) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    pinned = load_dataset("mnist", None, tmp_path / "cache")
    assert str(folder) in second.source  # read from the folder it filled, identical to the pinned copy
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert (getattr(first.arrays, name) == getattr(pinned.arrays, name)).all()
    with pytest.raises(Exception, match="does not hold the IDX files"):
        load_dataset("mnist", tmp_path / "empty", tmp_path / "cache")  # without download: still an error
