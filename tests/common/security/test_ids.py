"""Client-id and run-id syntax."""

from __future__ import annotations

import pytest

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.ids import valid_client_id, valid_run_id, validate_client_id

BAD = ["", "-c1", ".hidden", "../evil", "a/b", "a b", "é", "x" * 64, "c1\n", 7, None]
GOOD = ["C", "a_b.c-d", "9" * 63, "run-2026.12.01"]


@pytest.mark.parametrize("bad", BAD)
def test_bad_ids_are_refused_by_both_validators(bad):
    assert not valid_client_id(bad) and not valid_run_id(bad)
    with pytest.raises(TLSConfigError, match="invalid client id"):
        validate_client_id(bad)


@pytest.mark.parametrize("good", GOOD)
def test_good_ids_are_accepted_by_both_validators(good):
    assert valid_client_id(good) and valid_run_id(good)
    assert validate_client_id(good) == good


def test_the_error_names_the_rule_and_is_a_value_error():
    with pytest.raises(ValueError, match=r"invalid client id 'a b': use 1-63 characters from A-Z a-z 0-9 _ \. -"):
        validate_client_id("a b")
