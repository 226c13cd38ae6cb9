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

from slperf.common.paradigms.base import ClientMisbehaved

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


@pytest.mark.parametrize("options", [{"server_update": "sum"}, {"server_update": "lockstep"}])
def test_what_a_refused_evaluation_left_unread_does_not_reach_the_clients_next_pass(options):
    # An evaluation pass streams without replies: the liar has sent its PhaseDone before it reads the ABORTED.
    # Before the fix that PhaseDone was read as the first message of its next training pass (refused with
    # FAILED_PRECONDITION, which made the client give that pass up with an Error), and that Error was read as the
    # answer to the next evaluation: the liar's second refusal was never seen.
    fed = _attacked_run(config_from(BASE, paradigm="psl", **options), "c3")
    for rnd, (result, evaluation) in enumerate(fed.results):
        assert result.misbehaved["c3"].startswith(f"poisoned compute: round {rnd} step 0"), result.misbehaved
        assert list(evaluation.misbehaved) == ["c3"], (rnd, evaluation.misbehaved)
        assert evaluation.misbehaved["c3"].startswith(f"poisoned compute: round {rnd} step 0"), evaluation.misbehaved
    errors = [m.error for m in fed.down("c3", "error")]
    assert errors and all(e.code == 10 and "refused the" in e.message for e in errors), errors  # ABORTED only
    assert fed.up("c3", "error") == []


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


@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
def test_a_poisoned_head_does_not_move_the_ushaped_middle(schedule):
    config = config_from(BASE, paradigm="ushaped", schedule=schedule, clients=2, client_ids=["c1", "c2"])
    fed = _attacked_run(config, "c2", segment="head")
    for result, evaluation in fed.results:
        assert result.participants == ["c1"] and result.dropped == ["c2"], result
        assert result.misbehaved["c2"].startswith("poisoned compute: round"), result.misbehaved
        # U-shaped test figures are the clients' (their tails score): in parallel the liar reports its own
        if schedule == "sequential":
            assert evaluation.samples > 0 and evaluation.loss < 10
    assert _finite(fed.server.middle)


def test_async_sl_refuses_a_poisoned_batch_in_states_a_and_b():
    config = config_from(BASE, paradigm="async", epochs=2)
    torch.set_num_threads(1)

    async def main():
        async with InProcessFederation(config) as fed:
            _poison(fed, "c3", "bottom")
            await fed.round(0)  # every client's first turn is in state A
            fed.server.states["c3"] = "B"  # the liar's next turn is frozen: its batches would be cached for C
            await fed.round(1)
            return fed

    fed = asyncio.run(asyncio.wait_for(main(), 120))
    assert [r.extra["states"]["c3"] for r, _ in fed.results] == ["A", "B"]
    for result, _ in fed.results:
        assert result.participants == ["c1", "c2"] and result.dropped == ["c3"], result
        assert result.misbehaved["c3"].startswith("poisoned compute: round"), result.misbehaved
    assert "c3" not in fed.server.cache  # nothing of the refused B turn is kept for a C turn
    assert _finite(fed.server.top)


def test_async_sl_refuses_poisoned_cached_activations_before_any_update():
    config = config_from(BASE, paradigm="async", thred=1.0, epochs=1, clients=2, client_ids=["c1", "c2"])
    torch.set_num_threads(1)

    async def main():
        async with InProcessFederation(config) as fed:
            server = fed.server
            # c2's turn is in state C on a cache whose activations are poisoned (as if the top had moved far
            # enough since its B turn that they no longer give a plausible loss)
            server.states["c2"] = "C"
            shape = server.split.segments[0](torch.zeros(1, 1, 28, 28)).shape[1:]  # the cut's sample shape
            server.cache["c2"] = (torch.full((32, *shape), 1e30), torch.zeros(32, dtype=torch.int64))
            await fed.round(0)
            return fed

    fed = asyncio.run(asyncio.wait_for(main(), 120))
    ((result, _),) = fed.results
    assert result.participants == ["c1"] and "cached step 0" in result.misbehaved["c2"], result
    assert "c2" not in fed.server.cache and fed.server.states["c2"] == "A"
    assert _finite(fed.server.top)


VERTICAL = {
    **BASE,
    "paradigm": "vertical",
    "dataset": "adult",
    "batch_size": 64,
    "max_train_samples": 320,
    "max_test_samples": 128,
    "eval_batch_size": 64,
    "data_vertical_list": [6, 4, 4],
    "cut_layer_vertical_list": [4, 3, 2],
    "label_owner": 1,  # c2 holds the labels
}


def test_a_poisoned_vertical_party_is_dropped_and_the_others_finish():
    fed = _attacked_run(config_from(VERTICAL), "c3")
    for result, evaluation in fed.results:
        assert result.participants == ["c1", "c2"] and result.dropped == ["c3"], result
        assert result.misbehaved["c3"].startswith("poisoned compute: round"), result.misbehaved
        # the liar's test embeddings are refused too: scored without its columns, as a dropped party's
        assert list(evaluation.misbehaved) == ["c3"], (result, evaluation)
        assert "evaluation" in evaluation.misbehaved["c3"]
        assert evaluation.samples == 128 and evaluation.loss == evaluation.loss and evaluation.loss < 10
    assert _finite(fed.server.top)


def test_a_vertical_party_refused_only_while_evaluating_is_recorded_as_misbehaved():
    config = config_from(VERTICAL, epochs=1)
    torch.set_num_threads(1)

    async def main():
        async with InProcessFederation(config) as fed:
            module = fed.daemons["c1"].paradigm.segments["bottom"]
            module.register_forward_hook(lambda m, args, out: out if m.training else out * 1e30)
            return await fed.round(0)

    result, evaluation = asyncio.run(asyncio.wait_for(main(), 120))
    assert result.participants == ["c1", "c2", "c3"] and not result.misbehaved
    assert list(evaluation.misbehaved) == ["c1"], evaluation.misbehaved
    assert evaluation.misbehaved["c1"].startswith("poisoned compute: round 0")
    assert evaluation.samples == 128 and evaluation.loss < 10


def test_a_poisoned_label_owner_fails_the_vertical_run_naming_it_and_leaves_the_top_untouched():
    config = config_from(VERTICAL, epochs=1)
    torch.set_num_threads(1)

    async def main():
        async with InProcessFederation(config) as fed:
            initial = {k: v.clone() for k, v in fed.server.top.state_dict().items()}
            _poison(fed, "c2", "bottom")
            with pytest.raises(ClientMisbehaved) as failed:
                await fed.round(0)
            return fed, initial, failed.value

    fed, initial, failed = asyncio.run(asyncio.wait_for(main(), 120))
    assert failed.client_id == "c2" and "label owner" in str(failed) and "poisoned compute" in str(failed)
    # every step the owner took part in was refused before the optimiser: the top is the initial one
    assert all(torch.equal(initial[k], v) for k, v in fed.server.top.state_dict().items())
