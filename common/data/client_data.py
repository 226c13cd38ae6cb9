"""What a client daemon holds locally for a run: its own training shard and the evaluation set, as loaders.

It lives in the data layer (shards.py and the paradigms' client_data hooks build it; the paradigm API in
paradigms/base.py hands it to a ClientParadigm), so building a client's data needs nothing from the paradigms.
"""

from __future__ import annotations

from dataclasses import dataclass

from .loader import ShardLoader


@dataclass
class ClientData:
    """What a client daemon holds locally: only its own shard, plus the evaluation set."""

    train: ShardLoader
    test: ShardLoader
    num_classes: int
    input_shape: tuple[int, ...]
