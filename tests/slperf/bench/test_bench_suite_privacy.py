"""The suites' privacy axes: ``attacks`` (one list for every cell, or an axis of lists) and ``defenses`` (named
variants, each the cell's run-config ``defenses:``), their keys, configs, exclusions and errors, and the shipped
``privacy`` / ``privacy_tiny`` suites (every attack they ask for is one the cell's paradigm allows)."""

from __future__ import annotations

from typing import Any

import pytest
from bench_fakes import suite_dict

from slperf.bench.suite import SuiteError, expand, load_suite, parse_suite


def _matrix(**axes: Any) -> dict[str, Any]:
    return {
        "paradigms": ["vanilla", "ushaped"],
        "datasets": ["mnist"],
        "partitions": ["homo"],
        "clients": [2],
        "seeds": [0],
        **axes,
    }


def _suite(**axes: Any) -> dict[str, Any]:
    return suite_dict(matrix=_matrix(**axes), centralized=False)


def test_one_attack_list_goes_to_every_cell_and_leaves_the_keys_alone():
    cells = expand(parse_suite(_suite(attacks=["dcor", "inversion_whitebox"])))
    assert [c.key for c in cells] == ["vanilla/mnist/homo/c2/s0", "ushaped/mnist/homo/c2/s0"]
    assert all(c.config["attacks"] == ["dcor", "inversion_whitebox"] for c in cells)
    assert all(c.attack_set is None and c.defense is None for c in cells)


def test_an_axis_of_attack_lists_makes_a_cell_per_list():
    cells = expand(parse_suite(_suite(paradigms=["ushaped"], attacks=[["dcor"], ["dcor", "label_leak"]])))
    assert [c.key for c in cells] == [
        "ushaped/mnist/homo/c2/s0/atk-dcor",
        "ushaped/mnist/homo/c2/s0/atk-dcor+label_leak",
    ]
    assert [c.config["attacks"] for c in cells] == [["dcor"], ["dcor", "label_leak"]]
    assert cells[0].config_hash != cells[1].config_hash


def test_the_undefended_variant_names_the_cell_and_sets_no_config_key():
    plain = expand(parse_suite(_suite()))
    cells = expand(parse_suite(_suite(defenses={"none": {}})))
    assert [c.key for c in cells] == ["vanilla/mnist/homo/c2/s0/def-none", "ushaped/mnist/homo/c2/s0/def-none"]
    assert all(c.defense == "none" and c.config["defenses"] == {} for c in cells)
    # the same run as the suite without the axis: only the key says which variant it is
    assert [c.config_hash for c in cells] == [c.config_hash for c in plain]


def test_defended_variants_carry_their_mapping_into_the_cell_config():
    variants = {
        "none": {},
        "nopeek-0.5": {"nopeek": {"alpha": 0.5}},
        "noise-1.0": {"activation_noise": {"clip": 1.0, "sigma": 1.0}},
    }
    cells = expand(parse_suite(_suite(paradigms=["vanilla"], defenses=variants, attacks=["dcor"])))
    assert [c.key for c in cells] == [
        "vanilla/mnist/homo/c2/s0/def-none",
        "vanilla/mnist/homo/c2/s0/def-nopeek-0.5",
        "vanilla/mnist/homo/c2/s0/def-noise-1.0",
    ]
    by_defense = {c.defense: c for c in cells}
    assert by_defense["none"].config["defenses"] == {}
    assert by_defense["nopeek-0.5"].config["defenses"] == {"nopeek": {"alpha": 0.5}}
    # The run config's validator resolves the defaults (delta), so the cell carries what the run will use.
    noise = {"activation_noise": {"clip": 1.0, "sigma": 1.0, "delta": 1e-5}}
    assert by_defense["noise-1.0"].config["defenses"] == noise
    assert all(c.config["attacks"] == ["dcor"] for c in cells)
    assert len({c.config_hash for c in cells}) == 3


def test_a_defended_cell_goes_through_the_run_config_validator():
    (cell,) = expand(parse_suite(_suite(paradigms=["vanilla"], defenses={"nopeek-0.5": {"nopeek": {"alpha": 0.5}}})))
    assert cell.config["defenses"] == {"nopeek": {"alpha": 0.5}}
    bad = _suite(paradigms=["vanilla"], defenses={"nopeek-x": {"nopeek": {"alpha": -1}}})
    with pytest.raises(SuiteError, match=r"vanilla/mnist/homo/c2/s0/def-nopeek-x.*alpha"):
        expand(parse_suite(bad))


def test_exclude_rules_match_a_defense_family():
    raw = _suite(
        defenses={"none": {}, "label_dp-1": {"label_dp": {"epsilon": 1.0}}, "label_dp-4": {"label_dp": {"epsilon": 4}}},
    )
    raw["exclude"] = [{"paradigm": "ushaped", "defense": "label_dp"}]
    keys = [c.key for c in expand(parse_suite(raw))]
    assert keys == [
        "vanilla/mnist/homo/c2/s0/def-none",
        "ushaped/mnist/homo/c2/s0/def-none",
        "vanilla/mnist/homo/c2/s0/def-label_dp-1",
        "vanilla/mnist/homo/c2/s0/def-label_dp-4",
    ]


def test_an_attack_the_paradigm_rules_out_fails_the_expansion_naming_the_cell():
    with pytest.raises(SuiteError, match=r"vanilla/mnist/homo/c2/s0.*label_leak cannot run against vanilla"):
        expand(parse_suite(_suite(attacks=["label_leak"])))


def test_a_paradigm_override_gives_one_paradigm_its_own_attacks():
    raw = _suite(attacks=["dcor"])
    raw["overrides"] = {"paradigms": {"ushaped": {"attacks": ["dcor", "label_leak"]}}}
    cells = {c.paradigm: c for c in expand(parse_suite(raw))}
    assert cells["vanilla"].config["attacks"] == ["dcor"]
    assert cells["ushaped"].config["attacks"] == ["dcor", "label_leak"]


def test_centralized_baselines_get_no_attacks():
    raw = suite_dict(matrix=_matrix(paradigms=["vanilla"], attacks=["dcor"], defenses={"none": {}}))
    base, cell = expand(parse_suite(raw))
    assert base.key == "centralized/mnist/all/s0" and base.config["attacks"] == []
    assert cell.key == "vanilla/mnist/homo/c2/s0/def-none"


@pytest.mark.parametrize(
    "axes, fragment",
    [
        ({"attacks": "dcor"}, "attacks must be a list"),
        ({"attacks": []}, "attacks must be a list"),
        ({"attacks": ["dcor", ["inversion_whitebox"]]}, "mixes names and lists"),
        ({"attacks": [["dcor"], ["dcor"]]}, "twice"),
        ({"attacks": [[3]]}, "attack names"),
        ({"attacks": ["nosuch"]}, "unknown attack 'nosuch'"),
        ({"defenses": ["none"]}, "defenses must be a mapping"),
        ({"defenses": {}}, "defenses must be a mapping"),
        ({"defenses": {"a/b": {}}}, "without '/'"),
        ({"defenses": {"strong": 0.5}}, "must map to a run-config 'defenses' mapping"),
    ],
)
def test_bad_privacy_axes_are_named(axes, fragment):
    with pytest.raises(SuiteError, match=fragment):
        expand(parse_suite(_suite(**axes)))


def test_an_exclude_rule_on_defenses_needs_the_axis():
    raw = _suite()
    raw["exclude"] = [{"defense": "nopeek"}]
    with pytest.raises(SuiteError, match="no 'defenses' axis"):
        parse_suite(raw)


def test_an_axis_and_a_base_key_for_the_same_thing_are_refused():
    raw = _suite(attacks=["dcor"])
    raw["base"]["attacks"] = ["dcor"]
    with pytest.raises(SuiteError, match="base key 'attacks' is also a matrix axis"):
        parse_suite(raw)


def test_the_privacy_suite():
    suite = load_suite("privacy")
    assert suite.paradigms == ["vanilla", "splitfed_v1", "splitfed_v2", "psl", "ushaped"]
    assert suite.datasets == ["mnist", "fashionmnist"] and not suite.centralized
    cells = expand(suite)  # every attack validated against its cell's paradigm by the real config checks
    assert len(cells) == 2 * (5 * 7 + 4 * 2 + 1)  # 7 defences for all, label DP (2) but U-shaped, max-norm U-shaped
    by_paradigm: dict[str, set[str]] = {}
    for cell in cells:
        assert cell.defense is not None and cell.key.endswith(f"/def-{cell.defense}")
        by_paradigm.setdefault(cell.paradigm, set()).add(cell.defense)
        wanted = ["dcor", "inversion_whitebox"] + (["label_leak"] if cell.paradigm == "ushaped" else [])
        assert cell.config["attacks"] == wanted
        assert cell.config["backend"] == "sim"
    assert not any(d.startswith("label_dp") for d in by_paradigm["ushaped"])
    assert "grad_perturb-max_norm" in by_paradigm["ushaped"]
    for paradigm in ("vanilla", "splitfed_v1", "splitfed_v2", "psl"):
        assert {"none", "nopeek-0.2", "noise-1.0", "label_dp-1", "label_dp-4"} <= by_paradigm[paradigm]
        assert "grad_perturb-max_norm" not in by_paradigm[paradigm]


def test_the_tiny_privacy_suite_runs_today():
    cells = expand(load_suite("privacy_tiny"))
    assert [c.key for c in cells] == ["vanilla/mnist/homo/c2/s0/def-none", "ushaped/mnist/homo/c2/s0/def-none"]
    assert cells[1].config["attacks"] == ["dcor", "inversion_whitebox", "label_leak"]
    assert all(c.config["epochs"] == 1 and c.config["backend"] == "sim" for c in cells)
