"""The registry loads only plug-ins; every paradigm module imports only the API (base, threats), the registry and
the kit; aliases select their paradigm with the options they imply; ``slperf paradigms --details`` shows one."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import slperf.common.paradigms as package
from slperf.cli import main
from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms import registry

API = {"slperf.common.paradigms.base", "slperf.common.paradigms.threats", "slperf.common.paradigms.registry"}
PLUGINS = sorted(
    info.name
    for info in pkgutil.iter_modules(package.__path__)
    if not info.ispkg and info.name not in {"base", "threats", "registry"}
)


def test_plug_ins_are_the_modules_beside_the_api_and_the_kit_is_not_one():
    assert set(PLUGINS) == {
        "async_sl",
        "fedavg",
        "multitask",
        "psl",
        "sglr",
        "splitfed_v1",
        "splitfed_v2",
        "ushaped",
        "vanilla",
        "vertical",
    }
    modules = {spec.server.__module__.rsplit(".", 1)[-1] for spec in registry.all_specs()}
    assert modules == set(PLUGINS)


@pytest.mark.parametrize("name", PLUGINS)
def test_a_paradigm_imports_no_other_paradigm(name):
    tree = ast.parse((Path(package.__path__[0]) / f"{name}.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    paradigm_imports = {m for m in imported if m.startswith("slperf.common.paradigms")}
    assert paradigm_imports - API == {m for m in paradigm_imports if m.startswith("slperf.common.paradigms.kit.")}


@pytest.mark.parametrize(
    "alias, paradigm, option, value",
    [
        ("psl_sum", "psl", "server_update", "sum"),
        ("asy_vanilla2", "psl", "server_update", "sum"),
        ("psl_lockstep", "psl", "server_update", "lockstep"),
        ("synchronization", "psl", "server_update", "lockstep"),
        ("splitfed_v2_sequential", "splitfed_v2", "order", "sequential"),
        ("SplitFed", "splitfed_v2", "order", "sequential"),
        ("ushaped_parallel", "ushaped", "schedule", "parallel"),
        ("parallel_U_Shape", "ushaped", "schedule", "parallel"),
    ],
)
def test_an_alias_selects_its_paradigm_with_the_option_it_implies(alias, paradigm, option, value):
    cfg, _ = config_from_mapping({"paradigm": alias})
    assert (cfg.paradigm, cfg.options[option]) == (paradigm, value)
    cfg, _ = config_from_mapping({"paradigm": alias, option: value})  # saying it again is fine
    assert cfg.options[option] == value
    with pytest.raises(ConfigError, match=f"'{alias}' is '{paradigm}' with {option}: {value}"):
        config_from_mapping({"paradigm": alias, option: "other"})


def test_variant_names_keep_one_name_per_distinct_configuration():
    names = registry.variant_names()
    assert {"psl_sum", "psl_lockstep", "splitfed_v2_sequential", "ushaped_parallel"} <= set(names)
    assert not {"asy_vanilla2", "synchronization", "SplitFed", "parallel_U_Shape"} & set(names)
    assert [s.name for s in registry.all_specs()] == [n for n in names if n in {s.name for s in registry.all_specs()}]
    assert registry.variant_of("asy_vanilla2") == registry.variant_of("psl_sum") == "psl_sum"
    assert registry.variant_of("asy_vanilla") == registry.variant_of("psl") == "psl"
    assert registry.variant_of("parallel_U_Shape") == "ushaped_parallel"
    assert registry.variant_of("SplitFed") == "splitfed_v2_sequential"


def test_async_takes_loss_threshold_and_slperf_thred():
    assert config_from_mapping({"paradigm": "async", "thred": 0.3})[0].options == {"loss_threshold": 0.3}
    assert config_from_mapping({"paradigm": "async", "loss_threshold": 0.2})[0].options == {"loss_threshold": 0.2}


def test_paradigms_details_shows_protocol_options_aliases_and_deviations():
    out = CliRunner().invoke(main, ["paradigms", "--details", "synchronization"], catch_exceptions=False).output
    assert out.startswith("psl: ")
    assert "Who holds what" in out and "Protocol, per round" in out
    assert "server_update: str = 'arrival'" in out
    assert "psl_lockstep (= server_update: lockstep)" in out
    assert "time factor" in out
    assert "deliberate deviations from SLPerf's code:" in out and "SLPerf truncated every shard" in out
    out = CliRunner().invoke(main, ["paradigms", "--details", "async"], catch_exceptions=False).output
    assert "loss_threshold: float = 0.1 (SLPerf: thred)" in out
    listing = CliRunner().invoke(main, ["paradigms"], catch_exceptions=False).output
    assert "deviations" not in listing and listing.count("\n") == len(registry.all_specs())
