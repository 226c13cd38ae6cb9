"""The plug-in interface of an attack: what it needs the server to have seen, which steps it looks at, and the
figures it computes from a round's observations (``RoundLog``) against the ground truth."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from slperf.common.config import ConfigError, RunConfig
from slperf.common.paradigms.threats import Seen, ThreatModel
from slperf.common.privacy.observations import GroundTruth, RoundLog


@dataclass(frozen=True)
class AttackContext:
    config: RunConfig
    input_shape: tuple[int, ...]
    num_classes: int
    folder: Path | None  # the run folder, for pictures; None: none are written


class Attack(abc.ABC):
    """One attack of an honest-but-curious server. ``needs``: what the paradigm's threat model must let the server
    see; ``activation_steps`` / ``tail_steps``: how many of each client's first training steps it looks at."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[frozenset[Seen]]
    needs_producer: ClassVar[bool] = False
    excluded: ClassVar[frozenset[Seen]] = frozenset()  # pointless where the server sees these (labels in the clear)
    activation_steps: ClassVar[int] = 0
    tail_steps: ClassVar[int] = 0
    parameter_help: ClassVar[str] = ""  # what ``name:PARAMETER`` means; empty: the attack takes none

    def __init__(self, ctx: AttackContext, parameter: str | None = None):
        self.ctx = ctx
        self.check_parameter(parameter)
        self.eval_steps = 0  # how many of each client's first evaluation batches it looks at (set by an attack)

    @classmethod
    def check_parameter(cls, parameter: str | None) -> None:
        """Refuses (ConfigError) a parameter this attack does not take or cannot read."""
        if parameter is not None and not cls.parameter_help:
            raise ConfigError(f"config key 'attacks': {cls.name} takes no parameter (got '{cls.name}:{parameter}')")

    @classmethod
    def refusal(cls, threats: ThreatModel) -> str | None:
        """Why this attack cannot run against a paradigm with this threat model (None: it can)."""
        missing = [s.value for s in cls.needs if not threats.server_sees(s)]
        if missing:
            return f"the server never sees {', '.join(missing)}"
        if cls.needs_producer and not threats.server_holds_producer:
            return "the server never holds the client weights that produced the activations"
        present = [s.value for s in cls.excluded if threats.server_sees(s)]
        if present:
            return f"the server is sent {', '.join(present)} in the clear"
        return None

    @abc.abstractmethod
    def run(self, log: RoundLog, truth: GroundTruth) -> dict[str, dict[str, float]]:
        """Figures by client id (each a mapping of figure name -> value)."""
