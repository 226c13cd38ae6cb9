"""The privacy figures of a defended run, per round, computed from public quantities only (the config and each
client's training samples per round, which the server records anyway), so resuming a run recomputes them exactly.

* ``activation_noise``: each training step is a Gaussian mechanism of noise multiplier ``sigma`` on the batch's
  samples (sensitivity ``clip``, each sample's activation clipped to it), applied to a batch drawn at sample rate
  q = batch_size / samples of the client's shard; Opacus's RDP accountant composes the steps of every round so far
  (ceil(samples / batch_size) per round) into epsilon at ``delta``. As for DP-SGD, the accountant assumes Poisson
  sampling; SLPerf's shuffled batches are the usual approximation. The epsilon bounds what the *activations* tell
  the server; where the server also receives the client's trained weights (see the threat model), those are not
  covered.
* ``label_dp``: randomized response is epsilon-label-DP exactly, whatever the number of rounds (each sample's
  answer is drawn once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from slperf.common.config import RunConfig


def activation_epsilon(sigma: float, rounds: Sequence[tuple[int, int]], delta: float) -> float:
    """Epsilon at ``delta`` after the rounds ``(samples, batch_size)`` of one client, by Opacus's RDP accountant."""
    from opacus.accountants import RDPAccountant  # heavy (scipy): only runs with activation noise import it

    accountant = RDPAccountant()
    for samples, batch_size in rounds:
        if samples <= 0:
            continue
        rate = min(1.0, batch_size / samples)
        steps = -(-samples // batch_size)
        accountant.history.append((sigma, rate, steps))
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta=delta))


def defense_figures(config: RunConfig, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The defenses' figures after the last of ``records`` (the run's rounds so far, in order): the same layout as
    the attacks' (``figure: value`` over the clients, worst case, and ``"per_client"``)."""
    out: dict[str, Any] = {}
    per_client: dict[str, dict[str, float]] = {}
    noise = config.defenses.get("activation_noise")
    if noise is not None:
        history: dict[str, list[tuple[int, int]]] = {}
        for record in records:
            for cid, figures in record.get("per_client", {}).items():
                history.setdefault(cid, []).append((int(figures.get("samples") or 0), config.batch_size))
        for cid, rounds in sorted(history.items()):
            per_client.setdefault(cid, {})["activation_epsilon"] = activation_epsilon(
                noise["sigma"], rounds, noise["delta"]
            )
        values = [f["activation_epsilon"] for f in per_client.values() if math.isfinite(f["activation_epsilon"])]
        out["activation_epsilon"] = max(values) if values else math.inf
    label = config.defenses.get("label_dp")
    if label is not None:
        out["label_epsilon"] = float(label["epsilon"])
    out["per_client"] = per_client
    return out


def merge_figures(privacy: dict[str, Any] | None, figures: dict[str, Any]) -> dict[str, Any]:
    """The attacks' figures of a round with the defenses' added (per client too)."""
    merged = dict(privacy or {})
    per_client = {cid: dict(f) for cid, f in merged.get("per_client", {}).items()}
    for cid, f in figures.get("per_client", {}).items():
        per_client.setdefault(cid, {}).update(f)
    merged.update({k: v for k, v in figures.items() if k != "per_client"})
    merged["per_client"] = per_client
    return merged
