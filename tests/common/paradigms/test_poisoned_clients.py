"""One client's cut tensors poison what the server computes (huge finite activations: they pass the wire's
NaN/Inf check) in the paradigms that step a top in lock-step, the U-shaped middle and async SL's cached steps:
the server refuses the step before any update, drops the offender from the round as misbehaved, and the honest
clients finish with finite weights. On the in-process harness: the real server half, ClientProxy and client
daemons."""

from __future__ import annotations

import asyncio

import pytest
import torch
from sl_wire_harness import InProcessFederation, config_from

BASE = {
    "dataset": "mnist",
    "clients": 3,
    "epochs": 2,
    "batch_size": 16,
    "lr": 0.05,
    "max_train_samples": 144,
    "max_test_samples": 32,
    "eval_batch_size": 32,
    "seed": 3,
    "client_timeout": 30.0,
}


def _poison(fed: InProcessFederation, client_id: str, segment: str, scale: float = 1e30) -> None:
    """The client's segment outputs scaled by ``scale`` from now on (a forward hook on the client's own half)."""
    module = fed.daemons[client_id].paradigm.segments[segment]
    module.register_forward_hook(lambda m, args, out: out * scale)


def _finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def _attacked_run(config, liar: str, segment: str = "bottom"):
    torch.set_num_threads(1)

    async def main():
        async with InProcessFederation(config) as fed:
            _poison(fed, liar, segment)
            await fed.run()
            return fed

    return asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.parametrize(
    "paradigm,options",
    [("psl", {"server_update": "sum"}), ("psl", {"server_update": "lockstep"}), ("sglr", {})],
)
def test_a_poisoned_lockstep_batch_drops_its_client_and_the_others_finish(paradigm, options):
    fed = _attacked_run(config_from(BASE, paradigm=paradigm, **options), "c3")
    for result, evaluation in fed.results:
        assert result.participants == ["c1", "c2"] and result.dropped == ["c3"], result
        assert result.misbehaved["c3"].startswith("poisoned compute: round"), result.misbehaved
        assert evaluation.loss == evaluation.loss and evaluation.loss < 10
    assert _finite(fed.server.top)


# every psl client evaluates; splitfed_v1 evaluates through the first client that answers, vanilla through the
# one that trained last: the liar is the one each asks first
@pytest.mark.parametrize("paradigm,liar", [("psl", "c1"), ("splitfed_v1", "c1"), ("vanilla", "c3")])
def test_a_client_refused_for_a_poisoned_evaluation_is_recorded_as_misbehaved(paradigm, liar):
    config = config_from(BASE, paradigm=paradigm, epochs=1)
    torch.set_num_threads(1)

    async def main():
        async with InProcessFederation(config) as fed:
            module = fed.daemons[liar].paradigm.segments["bottom"]
            # only the test set's activations are poisoned: its training is honest
            module.register_forward_hook(lambda m, args, out: out if m.training else out * 1e30)
            return await fed.round(0)

    result, evaluation = asyncio.run(asyncio.wait_for(main(), 120))
    assert liar in result.participants and not result.misbehaved
    assert list(evaluation.misbehaved) == [liar], evaluation.misbehaved
    assert evaluation.misbehaved[liar].startswith("poisoned compute: round 0") and "evaluation batch" in str(
        evaluation.misbehaved
    )
    assert evaluation.samples > 0 and evaluation.loss < 10  # scored through an honest client
