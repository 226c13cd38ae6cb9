"""The original attributes of a tabular data set: a row's value code per attribute, and a vertical client's columns.

Both work from `DatasetSpec.features` (which encoded columns each original attribute became, see
sources/tabular.py), so they serve any tabular data set: `base_on_attribute` partitions split rows by an
attribute's values, `vertical` partitions give each client the columns of its attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .spec import DatasetSpec


def attribute_codes(spec: DatasetSpec, x: np.ndarray, column: int) -> np.ndarray:
    """Integer value codes (int64, one per row) of original attribute `column` of a tabular data set.

    Categorical: the category's index in the vocabulary (-1 for a row with no category, which the encoders
    never produce). Numeric: the rank of the row's value among the distinct values of these rows.
    """
    if spec.kind != "tabular" or not spec.features:
        raise ValueError(f"attribute partitions need a tabular data set with known attributes; {spec.name} is not one")
    if isinstance(column, bool) or not isinstance(column, (int, np.integer)) or not 0 <= column < len(spec.features):
        names = ", ".join(f"{i}={f.name}" for i, f in enumerate(spec.features))
        raise ValueError(
            f"attribute column must be 0..{len(spec.features) - 1} for {spec.name} ({names}), got {column!r}"
        )
    feat = spec.features[int(column)]
    x = np.asarray(x)
    if feat.categories:
        block = x[:, feat.start : feat.stop]
        codes = np.argmax(block, axis=1).astype(np.int64)
        codes[block.max(axis=1) <= 0] = -1
        return codes
    return np.unique(x[:, feat.start], return_inverse=True)[1].astype(np.int64).ravel()


def vertical_columns(spec: DatasetSpec, data_vertical_list: Sequence[int]) -> list[np.ndarray]:
    """The encoded column indices each client holds in a vertical partition.

    data_vertical_list counts ORIGINAL attributes per client, in order (SLPerf's meaning, e.g. [6, 4, 4] for
    Adult's 14 attributes: client 0 gets attributes 0-5, client 1 6-9, client 2 10-13); each client receives
    all encoded columns of its attributes (a categorical attribute's whole one-hot block). The counts must be
    positive and add up to the number of attributes.
    """
    if spec.kind != "tabular" or not spec.features:
        raise ValueError(f"a vertical partition needs a tabular data set (adult, german); {spec.name} is not one")
    counts = list(data_vertical_list)
    if not counts or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1 for c in counts):
        raise ValueError(f"data_vertical_list must be a list of positive attribute counts, got {data_vertical_list!r}")
    n = len(spec.features)
    if sum(counts) != n:
        raise ValueError(
            f"data_vertical_list {counts} covers {sum(counts)} attributes but {spec.name} has {n} "
            f"({', '.join(f.name for f in spec.features)})"
        )
    out, pos = [], 0
    for c in counts:
        feats = spec.features[pos : pos + c]
        out.append(np.concatenate([np.arange(f.start, f.stop) for f in feats]).astype(np.int64))
        pos += c
    return out
