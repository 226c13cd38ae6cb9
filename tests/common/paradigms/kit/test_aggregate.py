from __future__ import annotations

import pytest
import torch

from slperf.common.paradigms.kit.aggregate import fedavg


def test_identical_models_average_to_themselves_in_fresh_tensors():
    state = {"w": torch.randn(3, 4), "n": torch.tensor(7)}
    out = fedavg([(state, 10), (state, 30)])
    assert torch.equal(out["w"], state["w"]) and out["n"].item() == 7
    assert out["w"].data_ptr() != state["w"].data_ptr()


def test_weighted_by_samples_and_inputs_untouched():
    a = {"w": torch.zeros(2)}
    b = {"w": torch.ones(2)}
    out = fedavg([(a, 1), (b, 3)])
    torch.testing.assert_close(out["w"], torch.full((2,), 0.75))
    assert torch.equal(a["w"], torch.zeros(2)) and torch.equal(b["w"], torch.ones(2))


def test_integer_buffers_are_rounded_and_keep_dtype():
    out = fedavg([({"n": torch.tensor(1, dtype=torch.int64)}, 1), ({"n": torch.tensor(4, dtype=torch.int64)}, 1)])
    assert out["n"].dtype == torch.int64 and out["n"].item() in (2, 3)


def test_mismatched_states_are_refused():
    with pytest.raises(ValueError):
        fedavg([({"a": torch.zeros(1)}, 1), ({"b": torch.zeros(1)}, 1)])
    with pytest.raises(ValueError):
        fedavg([({"a": torch.zeros(1)}, 1), ({"a": torch.zeros(2)}, 1)])
    with pytest.raises(ValueError):
        fedavg([])
