from __future__ import annotations

import pytest
import torch

from slperf.common.config import ConfigError
from slperf.common.models import build_model, build_split, split_model


def test_split_segments_compose_to_the_unsplit_model():
    model = build_model("lenet", (1, 28, 28), 10, seed=0)
    split = build_split("lenet", (1, 28, 28), 10, seed=0, cuts=[1])
    x = torch.randn(4, 1, 28, 28)
    bottom, top = split.segments
    torch.testing.assert_close(top(bottom(x)), model(x))
    assert split.cut_shapes == [(6, 12, 12)] and split.cut_elements == [864]


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("lenet", (1, 28, 28), 10, seed=5)
    after = torch.rand(1)
    b = build_model("lenet", (1, 28, 28), 10, seed=5)
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("cuts", [[0], [4], [-1], [2, 2], [3, 1]])
def test_bad_cuts_are_config_errors(cuts):
    with pytest.raises(ConfigError):
        split_model(build_model("lenet", (1, 28, 28), 10, 0), cuts)


def test_unknown_model():
    with pytest.raises(ConfigError, match="lenet"):
        build_model("resnet9000", (1, 28, 28), 10, 0)
