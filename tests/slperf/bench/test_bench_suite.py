"""Suite files: partitions, matrix expansion with its keys and configs, error messages that name the key,
the built-in suites found by name (package data) and suite files found by path, the preflight notes."""

from __future__ import annotations

import pytest
import yaml
from bench_fakes import small_suite, suite_dict

from slperf.bench.suite import (
    CENTRALIZED,
    Partition,
    SuiteError,
    builtin_suite_names,
    expand,
    load_suite,
    parse_partition,
    parse_suite,
    preflight,
    registered_paradigms,
    resolve_suite_path,
)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("homo", Partition("homo")),
        ("iid", Partition("homo")),
        ("hetero:0.5", Partition("hetero", alpha=0.5)),
        ("dirichlet:2", Partition("hetero", alpha=2.0)),
        ("hetero", Partition("hetero", alpha=0.5)),
        ("label_skew:2", Partition("label_skew", classes=2)),
        ({"method": "label_skew", "classes": 3}, Partition("label_skew", classes=3)),
        ({"method": "hetero", "alpha": 2}, Partition("hetero", alpha=2.0)),
    ],
)
def test_partition_specs(spec, expected):
    assert parse_partition(spec) == expected


def test_partition_labels_and_config_keys():
    assert Partition("hetero", alpha=0.5).label == "hetero-a0.5"
    assert Partition("label_skew", classes=2).label == "label_skew-k2"
    assert Partition("homo").label == "homo"
    assert Partition("hetero", alpha=2.0).config_keys() == {"partition_method": "hetero", "partition_alpha": 2.0}
    assert Partition("label_skew", classes=2).config_keys() == {
        "partition_method": "label_skew",
        "class_number_per_client": 2,
    }


@pytest.mark.parametrize(
    "partition",
    [
        Partition("homo"),
        Partition("hetero", alpha=0.5),
        Partition("hetero", alpha=2.0),
        Partition("hetero", alpha=1e-3),
        Partition("label_skew", classes=2),
        Partition("base_on_class"),
        Partition("vertical"),
    ],
)
def test_a_rows_partition_label_names_the_partition_again(partition):
    """The report groups rows by their partition label and titles them through Partition, as the cells do."""
    assert Partition.from_label(partition.label) == partition
    assert Partition.from_label(partition.label).title == partition.title


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("hetero:abc", "not a number"),
        ({"method": "hetero", "alpha": -1}, "alpha"),
        ({"method": "homo", "alpha": 0.5}, "hetero only"),
        ({"alpha": 0.5}, "method"),
        ({"method": "hetero", "beta": 1}, "unknown keys"),
        (3, "string or a mapping"),
    ],
)
def test_bad_partitions_are_named(spec, fragment):
    with pytest.raises(SuiteError, match=fragment):
        parse_partition(spec)


def test_matrix_expansion_counts_keys_and_configs():
    suite = parse_suite(suite_dict())
    cells = expand(suite)
    central = [c for c in cells if c.paradigm == CENTRALIZED]
    runs = [c for c in cells if c.paradigm != CENTRALIZED]
    assert len(central) == 2  # one per dataset and seed
    assert len(runs) == 2 * 1 * 2 * 2 * 2
    assert cells[: len(central)] == central  # baselines first
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys)
    assert "splitfed_v1/mnist/hetero-a0.5/c3/s1" in keys
    assert "centralized/mnist/all/s0" in keys
    cell = next(c for c in runs if c.key == "splitfed_v1/mnist/hetero-a0.5/c3/s1")
    assert cell.config["partition_method"] == "hetero" and cell.config["partition_alpha"] == 0.5
    assert cell.config["clients"] == 3 and cell.config["seed"] == 1 and cell.config["epochs"] == 2
    # Paradigms innermost: the two paradigms of one group are neighbours.
    i = keys.index("vanilla/mnist/homo/c2/s0")
    assert keys[i + 1] == "splitfed_v1/mnist/homo/c2/s0"  # in the order the suite lists them
    # Keys and config hashes are stable: a second expansion gives the same.
    again = expand(parse_suite(suite_dict()))
    assert [(c.key, c.config_hash) for c in again] == [(c.key, c.config_hash) for c in cells]


def test_all_paradigms_come_from_the_registry():
    from slperf.common.paradigms import registry

    suite = parse_suite(
        suite_dict(
            matrix={"paradigms": "all", "datasets": ["mnist"], "partitions": ["homo"], "clients": [3], "seeds": [0]}
        )
    )
    # every paradigm, and each configuration an alias selects (psl_sum, ushaped_parallel, ...) as a cell of its own
    assert suite.paradigms == registry.variant_names()
    assert {s.name for s in registry.all_specs()} | {"psl_sum", "ushaped_parallel"} <= set(suite.paradigms)


def test_aliases_exclusions_and_override_precedence():
    raw = suite_dict(
        matrix={
            "paradigms": ["SplitFedV1", "vanilla"],
            "datasets": ["mnist"],
            "partitions": ["homo", "hetero:2"],
            "clients": [3],
            "seeds": [0],
        },
        exclude=[{"paradigm": "vanilla", "partition": "hetero"}],
        overrides={"datasets": {"mnist": {"epochs": 4, "lr": 0.1}}, "paradigms": {"vanilla": {"lr": 0.2}}},
        centralized=False,
    )
    cells = expand(parse_suite(raw))
    keys = [c.key for c in cells]
    assert keys == ["splitfed_v1/mnist/homo/c3/s0", "vanilla/mnist/homo/c3/s0", "splitfed_v1/mnist/hetero-a2/c3/s0"]
    by_key = {c.key: c for c in cells}
    assert by_key["splitfed_v1/mnist/homo/c3/s0"].config["epochs"] == 4  # dataset override over base
    assert by_key["splitfed_v1/mnist/homo/c3/s0"].config["lr"] == 0.1
    assert by_key["vanilla/mnist/homo/c3/s0"].config["lr"] == 0.2  # paradigm override last


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"base": {"epochs": 2, "partition_alfa": 0.5}}, "partition_alfa"),
        ({"base": {"paradigm": "vanilla"}}, "set by the matrix"),
        ({"matrix": {"paradigms": ["nosuch"], "datasets": ["mnist"]}}, "nosuch"),
        ({"matrix": {"paradigms": ["vanilla"], "clients": [0]}}, "clients"),
        ({"matrix": {"paradigms": ["vanilla"], "colour": ["red"]}}, "colour"),
        ({"surprise": 1}, "surprise"),
        ({"target_accuracy": 1.5}, "target_accuracy"),
        ({"exclude": [{"shape": "round"}]}, "shape"),
    ],
)
def test_suite_errors_name_the_key(change, fragment):
    with pytest.raises(SuiteError, match=fragment):
        expand(parse_suite(suite_dict(**change)))


def test_suite_names_resolve_to_the_shipped_files():
    for name in ("quick", "paper"):
        path = resolve_suite_path(name)
        assert path.name == f"{name}.yaml"
        suite = load_suite(name)
        assert suite.name == name
    quick = load_suite("quick")
    assert quick.datasets == ["mnist"] and quick.clients == [3]
    assert [p.label for p in quick.partitions] == ["homo", "hetero-a0.5"]
    assert quick.base["epochs"] == 2 and quick.base["max_train_samples"]
    cells = expand(quick)
    runnable = [p for p in registered_paradigms() if p != "vertical"]  # excluded: tabular data only
    assert len(cells) == 1 + 2 * len(runnable)
    paper = load_suite("paper")
    assert paper.datasets == ["mnist", "fashionmnist", "cifar10", "adult"]
    assert [p.label for p in paper.partitions] == ["homo", "hetero-a0.5", "hetero-a2", "label_skew-k2"]
    assert paper.clients == [3, 10] and paper.seeds == [0, 1, 2]
    assert paper.base["batch_size"] == 128 and paper.base["lr"] == 0.01 and paper.base["momentum"] == 0.9
    with pytest.raises(SuiteError, match="no suite named"):
        resolve_suite_path("no_such_suite")


def test_the_built_in_suites_are_package_data():
    assert builtin_suite_names() == ["network", "paper", "privacy", "privacy_tiny", "quick"]
    path = resolve_suite_path("quick")
    assert path.is_file() and "name: quick" in path.read_text(encoding="utf-8")


def test_a_suite_file_is_found_by_its_path(tmp_path):
    raw = suite_dict()
    del raw["name"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert resolve_suite_path(str(path)) == path
    suite = load_suite(path)
    assert suite.name == "mine" and suite.source == path
    assert len(expand(suite)) == len(expand(parse_suite(suite_dict())))
    with pytest.raises(SuiteError, match="suite file not found"):
        resolve_suite_path(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("matrix: [unclosed")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(tmp_path / "broken.yaml")


def test_preflight_names_unregistered_models():
    raw = suite_dict(
        matrix={"paradigms": ["vanilla"], "datasets": ["mnist"], "partitions": ["homo"], "clients": [2], "seeds": [0]},
        overrides={"paradigms": {"vanilla": {"model": "nosuchmodel"}}},
    )
    notes = preflight(expand(parse_suite(raw)))
    assert len(notes) == 1 and "nosuchmodel" in notes[0]
    assert preflight(expand(small_suite())) == []


def test_resources_that_ray_cannot_hold_are_suite_errors():
    assert parse_suite(suite_dict()).resources.line() == "1 CPU(s), 0 GPU(s)"
    assert parse_suite(suite_dict(resources={"cpus": 0.5, "gpus": 2})).resources.gpus == 2.0
    for bad, match in (
        ({"cpus": 0}, "cpus must be a positive"),
        ({"gpus": -1}, "gpus must be a non-negative"),
        ({"cpus": "two"}, "cpus must be"),
        ({"cpus": 1.5}, "whole number"),
        ({"gpu": 1}, "unknown resources keys"),
        ([1], "must be a mapping"),
    ):
        with pytest.raises(SuiteError, match=match):
            parse_suite(suite_dict(resources=bad))
