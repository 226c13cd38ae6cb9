"""The built-in models: SLPerf's LeNet, CIFAR ResNets, a VGG-style CNN, and MLPs for the tabular data sets.

`BUILTIN_MODELS` is the table the registry (models.py) starts from; nothing here imports the registry.

Every model is a flat ``nn.Sequential`` of blocks, so ``split_model`` can cut it after
any block and every segment is a self-contained module; BatchNorm lives inside the blocks, so a cut never
separates a layer from its normalisation. Factories follow ``ModelFactory``:
``factory(in_channels_or_features, num_classes, image_size)``. ``build_model`` calls them with
``input_shape[0]`` and ``input_shape[-1]``; for a tabular input_shape ``(F,)`` both are F, and the MLP
factories take F from the first argument and ignore the third.

Models (blocks; what crosses the wire at the default split_layer 1, per sample):

* ``lenet``: SLPerf's LeNet, two conv blocks, a flatten and an MLP block (4 blocks).
* ``resnet20`` / ``resnet56``: the CIFAR ResNets of He et al. (2016): a 3×3 stem conv (16) + BN + ReLU, then
  3 stages of n basic blocks (n = 3 / 9) with widths 16 / 32 / 64 (stride 2 at the first block of stages 2
  and 3, 1×1 conv + BN projection shortcut where the shape changes), then global average pooling + linear.
  Blocks: stem, each basic block, head → 11 / 29 blocks. Cut 1 sends the stem output, 16×32×32 = 16 384
  floats per sample, exactly SLPerf's ResNet-56 cut. (SLPerf's ResNet-56 is FedML's bottleneck variant
  with expansion 4, so its server side is wider; the client side and the cut size are the same.)
* ``vgg_cifar``: SLPerf's VGG-like CIFAR CNN re-expressed as blocks: conv 64, conv 64 + pool (the
  ``cifar10_client`` part, 64×16×16 after block 2), conv 128, conv 128 + pool, conv 256, conv 256 + pool,
  conv 512, conv 512, then FC 8192→1024→1024→classes with dropout (11 blocks). Every conv is followed by BN and
  ReLU.
* ``mlp_adult`` / ``mlp_german``: SLPerf's layer widths (adult F→10→7→classes, german F→14→7→classes) as three
  blocks, with a ReLU after each hidden layer (SLPerf's model had no non-linearity, i.e. it was linear).
  Cut 1 sends 10 (adult) or 14 (german) floats per sample.
* ``mlp``: a generic tabular MLP, F→64→32→classes, three blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slperf.common.config import ConfigError

# factory(in_channels_or_features, num_classes, image_size) -> the unsplit model as a sequence of blocks
ModelFactory = Callable[[int, int, int], nn.Sequential]


def lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """SLPerf's LeNet: two conv blocks, a flatten and an MLP block; cut after block 1 by default."""
    side = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(),
        nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        ),
    )


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus a shortcut (identity, or 1×1 conv + BN when the shape changes), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _init_conv_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def cifar_resnet(depth: int, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Sequential:
    """CIFAR ResNet of the given depth (6n+2: 20, 32, 44, 56, 110) as a flat sequence of blocks."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    blocks: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    ]
    in_planes = 16
    for stage, planes in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            blocks.append(BasicBlock(in_planes, planes, stride))
            in_planes = planes
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)))
    return _init_conv_bn(nn.Sequential(*blocks))


def resnet20(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Sequential:
    return cifar_resnet(20, in_channels, num_classes, image_size)


def resnet56(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Sequential:
    return cifar_resnet(56, in_channels, num_classes, image_size)


def _conv(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def vgg_cifar(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Sequential:
    """VGG-style CNN after SLPerf's cifar10_client/cifar10_server (see the module docstring)."""
    if image_size % 8:
        raise ConfigError(f"model 'vgg_cifar' needs an image size divisible by 8, got {image_size}")
    side = image_size // 8
    blocks = [
        _conv(in_channels, 64),
        _conv(64, 64, pool=True),
        _conv(64, 128),
        _conv(128, 128, pool=True),
        _conv(128, 256),
        _conv(256, 256, pool=True),
        _conv(256, 512),
        _conv(512, 512),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(512 * side * side, 1024), nn.ReLU()),
        nn.Sequential(nn.Dropout(0.5), nn.Linear(1024, 1024), nn.ReLU()),
        nn.Sequential(nn.Linear(1024, num_classes)),
    ]
    return _init_conv_bn(nn.Sequential(*blocks))


def tabular_mlp(
    in_features: int, num_classes: int, hidden: tuple[int, ...], image_size: int = 0, name: str = "mlp"
) -> nn.Sequential:
    """One block per hidden layer (Linear + ReLU) and a final Linear block.

    build_model passes (input_shape[0], num_classes, input_shape[-1]); for a tabular input_shape (F,) the first
    and last are both F, so a different third value means an image data set was paired with this model.
    """
    if image_size not in (0, in_features):
        raise ConfigError(
            f"model '{name}' is for tabular data sets (input_shape (F,)); this data set has images "
            f"({in_features} channels of {image_size}x{image_size})"
        )
    if in_features < 1 or not hidden:
        raise ValueError("a tabular MLP needs at least one input feature and one hidden layer")
    blocks, width = [], in_features
    for h in hidden:
        blocks.append(nn.Sequential(nn.Linear(width, h), nn.ReLU()))
        width = h
    blocks.append(nn.Sequential(nn.Linear(width, num_classes)))
    return nn.Sequential(*blocks)


def mlp_adult(in_features: int, num_classes: int = 2, image_size: int = 0) -> nn.Sequential:
    return tabular_mlp(in_features, num_classes, (10, 7), image_size, "mlp_adult")


def mlp_german(in_features: int, num_classes: int = 2, image_size: int = 0) -> nn.Sequential:
    return tabular_mlp(in_features, num_classes, (14, 7), image_size, "mlp_german")


def mlp(in_features: int, num_classes: int = 2, image_size: int = 0) -> nn.Sequential:
    return tabular_mlp(in_features, num_classes, (64, 32), image_size, "mlp")


BUILTIN_MODELS: dict[str, ModelFactory] = {
    "lenet": lenet,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg_cifar": vgg_cifar,
    "mlp_adult": mlp_adult,
    "mlp_german": mlp_german,
    "mlp": mlp,
}
