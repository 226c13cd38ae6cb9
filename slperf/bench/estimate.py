"""Time estimates for benchmark cells, so a suite can say up front (and after each cell) how long it has left.

A cell costs a start-up overhead (processes, TLS, data set-up; grows with the client count) plus a rate
(seconds per sample of work) times its work units. Rates start from a prior table scaled by the paradigm's
own ``ParadigmSpec.time_factor`` (so adding a paradigm needs no edit here) and are replaced by what finished
cells measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from slperf.bench.suite import CENTRALIZED, Cell, Suite

# Training / test set sizes, for time estimates only (a suite with caps uses the caps).
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "mnist": (60000, 10000),
    "fashionmnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar10-synthetic": (50000, 10000),
    "adult": (32561, 16281),
    "german": (800, 200),
}
# Prior seconds per training sample of one federation pass (LeNet-sized models on this kind of machine,
# evaluation included as 0.3 of a training sample per test sample); a paradigm scales it by its time_factor.
PRIOR_SECONDS_PER_SAMPLE: dict[str, float] = {
    "mnist": 3e-4,
    "fashionmnist": 3e-4,
    "cifar10": 2.5e-3,
    "cifar10-synthetic": 2.5e-3,
    "adult": 1e-4,
    "german": 1e-4,
}
DEFAULT_SECONDS_PER_SAMPLE = 5e-4
CENTRALIZED_TIME_FACTOR = 0.4  # one process, no cut: a paradigm's own factor is on its ParadigmSpec
EVAL_WEIGHT = 0.3


def work_units(config: Mapping[str, Any]) -> float:
    """Samples processed by one run: epochs x (training samples + EVAL_WEIGHT x test samples)."""
    train_n, test_n = DATASET_SIZES.get(str(config.get("dataset")), (60000, 10000))
    if config.get("max_train_samples"):
        train_n = min(train_n, int(config["max_train_samples"]))
    if config.get("max_test_samples"):
        test_n = min(test_n, int(config["max_test_samples"]))
    return float(config.get("epochs", 3)) * (train_n + EVAL_WEIGHT * test_n)


class Estimator:
    """Expected seconds of a cell: overhead(clients) + seconds-per-sample(paradigm, dataset) x work units.

    Priors come from the tables above (or the suite's ``estimate`` key); every finished cell refines them:
    the per-(paradigm, dataset) rate becomes the mean observed rate, unseen pairs are scaled from what the
    same dataset (or any dataset) observed, and the start-up overhead is rescaled by the median observed
    ratio to its prior.
    """

    def __init__(
        self,
        seconds_per_sample: Mapping[str, float] | None = None,
        overhead_seconds: float | None = None,
        per_client_seconds: float | None = None,
    ):
        self.sps_prior = {**PRIOR_SECONDS_PER_SAMPLE, **dict(seconds_per_sample or {})}
        self.overhead_base = 4.0 if overhead_seconds is None else float(overhead_seconds)
        self.overhead_per_client = 2.0 if per_client_seconds is None else float(per_client_seconds)
        self.rates: dict[tuple[str, str], list[float]] = {}
        self.overhead_ratios: list[float] = []

    @classmethod
    def for_suite(cls, suite: Suite) -> Estimator:
        est = suite.estimate
        return cls(est.get("seconds_per_sample"), est.get("overhead_seconds"), est.get("per_client_seconds"))

    def _prior_rate(self, paradigm: str, dataset: str) -> float:
        from slperf.common.paradigms import registry

        factor = CENTRALIZED_TIME_FACTOR if paradigm == CENTRALIZED else registry.get(paradigm).time_factor
        return self.sps_prior.get(dataset, DEFAULT_SECONDS_PER_SAMPLE) * factor

    def prior_overhead(self, clients: int | None) -> float:
        if not clients:  # centralized: one process start-up
            return self.overhead_base * 0.75
        return self.overhead_base + self.overhead_per_client * clients

    def observe(self, row: Mapping[str, Any]) -> None:
        if row.get("status") != "ok":
            return
        config = row.get("config") or {}
        units = work_units(config) if config else 0.0
        train = row.get("train_seconds")
        total = row.get("total_seconds")
        if units > 0 and train:
            self.rates.setdefault((row["paradigm"], row["dataset"]), []).append(float(train) / units)
        if total is not None and train is not None:
            prior = self.prior_overhead(row.get("clients"))
            self.overhead_ratios.append(max(0.0, float(total) - float(train)) / prior)

    def rate(self, paradigm: str, dataset: str) -> tuple[float, str]:
        if (paradigm, dataset) in self.rates:
            seen = self.rates[(paradigm, dataset)]
            return statistics.fmean(seen), f"{len(seen)} finished {paradigm}/{dataset} cell(s)"
        same_ds = [(p, statistics.fmean(v)) for (p, d), v in self.rates.items() if d == dataset]
        if same_ds:
            scale = statistics.fmean(r / self._prior_rate(p, dataset) for p, r in same_ds)
            basis = f"prior rescaled by {len(same_ds)} {dataset} paradigm(s)"
            return self._prior_rate(paradigm, dataset) * scale, basis
        if self.rates:
            scale = statistics.fmean(statistics.fmean(v) / self._prior_rate(p, d) for (p, d), v in self.rates.items())
            return self._prior_rate(paradigm, dataset) * scale, "prior rescaled by other datasets"
        return self._prior_rate(paradigm, dataset), "prior table"

    def estimate(self, cell: Cell) -> tuple[float, str]:
        rate, basis = self.rate(cell.paradigm, cell.dataset)
        overhead = self.prior_overhead(cell.clients)
        if self.overhead_ratios:
            overhead *= statistics.median(self.overhead_ratios)
        return overhead + rate * work_units(cell.config), basis
