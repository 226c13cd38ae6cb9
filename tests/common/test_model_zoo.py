"""The model zoo: every model cuts at every valid split_layer, the segments compose to the unsplit model in
train and eval mode (BatchNorm included), gradients through a cut equal the unsplit ones, and cut sizes."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from slperf.common import model_zoo
from slperf.common.config import ConfigError
from slperf.common.models import MODELS, build_model, build_split, split_model

CIFAR = (3, 32, 32)
CASES = [
    ("resnet20", CIFAR, 10, 11),
    ("resnet56", CIFAR, 10, 29),
    ("vgg_cifar", CIFAR, 10, 11),
    ("mlp_adult", (108,), 2, 3),
    ("mlp_german", (61,), 2, 3),
    ("mlp", (24,), 2, 3),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _batch(shape, n=4, seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_registered():
    for name in IDS:
        assert name in MODELS and "lenet" in MODELS


@pytest.mark.parametrize("name,shape,classes,blocks", CASES, ids=IDS)
def test_every_cut_composes_to_the_unsplit_model_in_eval(name, shape, classes, blocks):
    model = build_model(name, shape, classes, seed=3).eval()
    assert len(model) == blocks
    x = _batch(shape, n=2)
    with torch.no_grad():
        want = model(x)
        assert want.shape == (2, classes)
        # Block outputs once, then every cut is checked against them: cut k sends block k-1's output.
        acts = [x]
        for block in model:
            acts.append(block(acts[-1]))
        torch.testing.assert_close(acts[-1], want)
        for cut in range(1, blocks):
            bottom, top = split_model(model, [cut])
            sent = bottom(x)
            torch.testing.assert_close(sent, acts[cut])
            torch.testing.assert_close(top(sent), want)


@pytest.mark.parametrize("name,shape,classes,blocks", CASES, ids=IDS)
def test_every_cut_matches_in_train_mode_and_updates_batchnorm_alike(name, shape, classes, blocks):
    """Train mode: BatchNorm uses batch statistics and updates its running statistics; a split model held by
    two parties must produce the same outputs and the same running statistics as the unsplit one."""
    x = _batch(shape, n=3, seed=1)
    pristine = build_model(name, shape, classes, seed=5)
    ref = copy.deepcopy(pristine).train()
    torch.manual_seed(0)  # dropout (vgg_cifar) draws from the global generator: same draws for both runs
    with torch.no_grad():
        want = ref(x)
    cuts = sorted({1, blocks // 2, blocks - 1})
    for cut in cuts:
        model = copy.deepcopy(pristine).train()
        bottom, top = split_model(model, [cut])
        torch.manual_seed(0)
        with torch.no_grad():
            got = top(bottom(x))
        torch.testing.assert_close(got, want)
        for (ka, va), (kb, vb) in zip(ref.state_dict().items(), model.state_dict().items()):
            assert ka == kb
            torch.testing.assert_close(va, vb, msg=f"{name} cut {cut}: {ka}")


@pytest.mark.parametrize("name,shape,classes,blocks", CASES, ids=IDS)
def test_gradients_through_a_cut_equal_the_unsplit_ones(name, shape, classes, blocks):
    """Split-learning backward: the server's input gradient, fed back into the client's segment, gives the
    same parameter gradients as backward through the unsplit model."""
    x = _batch(shape, n=2, seed=2)
    y = torch.arange(2) % classes
    ref = build_model(name, shape, classes, seed=7).eval()  # eval: dropout off, BN deterministic
    nn.functional.cross_entropy(ref(x), y).backward()
    model = build_model(name, shape, classes, seed=7).eval()
    cut = max(1, blocks // 2)
    bottom, top = split_model(model, [cut])
    act = bottom(x)
    received = act.detach().requires_grad_()
    nn.functional.cross_entropy(top(received), y).backward()
    act.backward(received.grad)
    for (ka, pa), (kb, pb) in zip(ref.named_parameters(), model.named_parameters()):
        assert ka == kb
        torch.testing.assert_close(pa.grad, pb.grad, msg=f"{name}: {ka}", rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,shape,classes,blocks", CASES, ids=IDS)
def test_u_shaped_two_cuts_and_bad_cuts(name, shape, classes, blocks):
    split = build_split(name, shape, classes, seed=0, cuts=[1, blocks - 1])
    assert len(split.segments) == 3 and len(split.cut_shapes) == 2
    model = build_model(name, shape, classes, seed=0).eval()
    x = _batch(shape, n=2)
    with torch.no_grad():
        out = x
        for seg in split.segments:
            seg.eval()
            out = seg(out)
        torch.testing.assert_close(out, model(x))
    for cuts in ([0], [blocks], [2, 1]):
        with pytest.raises(ConfigError):
            build_split(name, shape, classes, seed=0, cuts=cuts)


def test_cut_sizes_match_slperf():
    # ResNet stem: 16x32x32 floats per sample, SLPerf's ResNet-56 cut
    for name in ("resnet20", "resnet56"):
        split = build_split(name, CIFAR, 10, seed=0, cuts=[1])
        assert split.cut_shapes == [(16, 32, 32)] and split.cut_elements == [16384]
    # SLPerf's cifar10_client: two 64-channel convs and a pool
    assert build_split("vgg_cifar", CIFAR, 10, seed=0, cuts=[2]).cut_shapes == [(64, 16, 16)]
    assert build_split("mlp_adult", (108,), 2, seed=0, cuts=[1]).cut_shapes == [(10,)]
    assert build_split("mlp_german", (61,), 2, seed=0, cuts=[1]).cut_shapes == [(14,)]
    assert build_split("mlp_german", (24,), 2, seed=0, cuts=[2]).cut_shapes == [(7,)]


def test_parameter_counts_are_the_papers():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(build_model("resnet20", CIFAR, 10, 0)) - 0.27e6) < 0.01e6
    assert abs(count(build_model("resnet56", CIFAR, 10, 0)) - 0.86e6) < 0.01e6


def test_same_seed_same_weights_other_seed_differs():
    a = build_model("resnet20", CIFAR, 10, seed=1).state_dict()
    b = build_model("resnet20", CIFAR, 10, seed=1).state_dict()
    c = build_model("resnet20", CIFAR, 10, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.0.weight"], c["0.0.weight"])


def test_batchnorm_is_inside_blocks_and_eval_uses_running_stats():
    model = build_model("resnet20", CIFAR, 10, seed=0)
    top_level = [type(m) for m in model.children()]
    assert nn.BatchNorm2d not in top_level
    x = _batch(CIFAR, n=8)
    model.train()
    with torch.no_grad():
        model(x)  # updates running statistics
    stem_bn = model[0][1]
    assert stem_bn.num_batches_tracked.item() == 1 and not torch.all(stem_bn.running_mean == 0)
    model.eval()
    with torch.no_grad():
        one = model(x[:1])
        many = model(x)
    torch.testing.assert_close(one, many[:1])  # eval: a sample's output does not depend on its batch


def test_other_image_sizes_and_channels():
    assert build_model("resnet20", (1, 28, 28), 10, 0)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("vgg_cifar", (3, 64, 64), 5, 0).eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_model("vgg_cifar", (1, 28, 28), 10, 0)
    with pytest.raises(ConfigError, match="'mlp_adult' is for tabular data sets"):
        build_model("mlp_adult", (1, 28, 28), 10, 0)
    with pytest.raises(ValueError, match="6n\\+2"):
        model_zoo.cifar_resnet(21)


@pytest.mark.slow  # starts a Python process of its own
def test_the_registry_starts_from_the_zoo_table_and_the_zoo_does_not_import_the_registry():
    assert set(model_zoo.BUILTIN_MODELS) <= set(MODELS)
    assert all(MODELS[name] is factory for name, factory in model_zoo.BUILTIN_MODELS.items())
    script = "import sys, slperf.common.model_zoo; print('slperf.common.models' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
