"""Reading configs (YAML text, files, the server's JSON) and resolving them against the registered paradigms and
data sets (config_loader.py)."""

from __future__ import annotations

import tracemalloc

import pytest

from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_json, config_from_mapping, load_config, load_config_text


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="partition_alfa"):
        load_config_text("partition_alfa: 0.5\n")


def test_unknown_paradigm_lists_known_ones():
    with pytest.raises(ConfigError, match="splitfed_v1"):
        load_config_text("paradigm: nope\n")


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


def test_unknown_dataset_is_checked_against_the_data_registry():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*mnist"):
        load_config_text("dataset: imagenet\n")


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, fragment",
    [
        (_bomb(9), "values once its aliases are expanded"),  # 352 bytes, 9^9 values when walked
        ("a: " + "[" * 5000 + "]" * 5000, "nested more than 32 levels deep"),
        ("epochs: " + "9" * 5000, "an integer of 5000 digits"),
        ("# " + "x" * (2 << 20), "a config may have at most 1048576"),
    ],
    ids=["alias-bomb", "deep", "huge-int", "huge-text"],
)
def test_hostile_yaml_is_a_config_error_naming_the_problem_and_costs_nothing(text, fragment):
    # What it costs is measured in memory, which a loaded machine does not change (a walked bomb takes gigabytes).
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="refused") as info:
            load_config_text(text, source="run config")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fragment in str(info.value)
    assert peak < 64 << 20, f"refusing it took {peak >> 20} MiB"


def test_compress_names_a_codec_per_direction_and_the_exchange_declares_it():
    from slperf.common.paradigms import registry

    cfg, _ = config_from_mapping({"paradigm": "vanilla", "compress": {"up": "int8:channel", "down": "topk:0.1"}})
    stage = registry.get("vanilla").exchange(cfg, 0).train[0]
    assert stage.up.codec.name() == "int8:channel" and stage.down is not None and stage.down.codec.name() == "topk:0.1"
    plain, _ = config_from_mapping({"paradigm": "vanilla"})
    assert plain.compress == {} and not registry.get("vanilla").exchange(plain, 0).train[0].up.codec.compressed


@pytest.mark.parametrize(
    "compress, fragment",
    [
        ({"up": "int4"}, "'compress.up' must be one of none, fp16, bf16, int8"),
        ({"sideways": "fp16"}, "takes the directions up and down, not sideways"),
        ({"down": "topk:0"}, "topk fraction must be in (0, 1]"),
        ({"down": "topk:1.5"}, "topk fraction must be in (0, 1]"),
        ({"up": "int8:tensor"}, "'compress.up' must be one of"),
        ({"up": 8}, "must be a codec name"),
        ("int8", "must be a mapping"),
    ],
)
def test_a_bad_compress_is_a_config_error_naming_it(compress, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"paradigm": "vanilla", "compress": compress})
    assert fragment in str(info.value)


def test_a_paradigm_without_a_cut_refuses_compress():
    with pytest.raises(ConfigError, match="'compress.up': fedavg sends no float32 cut tensor up"):
        config_from_mapping({"paradigm": "fedavg", "compress": {"up": "fp16"}})
