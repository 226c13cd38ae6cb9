"""The fed server's aggregator: FedAvg weighted by the main server's sample counts, and a bad upload refused to its
sender alone while the round settles for the others."""

from __future__ import annotations

import grpc
import pytest
import torch

from slperf.common.paradigms.kit.aggregate import AggregationRule
from slperf.common.protocol.exchange import TensorLayout
from slperf.fedserver.aggregator import FedAggregator, Refused

LAYOUT = (TensorLayout("w", (2, 2)), TensorLayout("b", (2,)))


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), value), "b": torch.full((2,), value)}


def opened(clients: tuple[str, ...] = ("a", "b", "c")) -> FedAggregator:
    agg = FedAggregator()
    agg.open("run", 0, "bottom", LAYOUT, AggregationRule(), clients)
    return agg


def test_average_is_weighted_by_the_samples_the_main_server_counted() -> None:
    agg = opened()
    agg.upload("run", 0, "bottom", "a", state(1.0))
    agg.upload("run", 0, "bottom", "b", state(4.0))
    done = agg.settle("run", 0, {"a": 300, "b": 100})
    assert done.averaged == ["a", "b"] and done.missing == []
    round, average = agg.latest("run", 0, "a")
    assert round == 0
    torch.testing.assert_close(average["w"], torch.full((2, 2), 1.75))  # (300 * 1 + 100 * 4) / 400
    torch.testing.assert_close(average["b"], torch.full((2,), 1.75))


@pytest.mark.parametrize(
    "bad",
    [
        {"w": torch.zeros(3, 3), "b": torch.zeros(2)},  # another shape
        {"w": torch.zeros(2, 2)},  # a tensor missing
        {"w": torch.full((2, 2), float("nan")), "b": torch.zeros(2)},  # not finite
        {"w": torch.zeros(2, 2, dtype=torch.float64), "b": torch.zeros(2)},  # another dtype
    ],
)
def test_a_bad_upload_is_refused_and_the_others_are_averaged(bad: dict[str, torch.Tensor]) -> None:
    agg = opened()
    agg.upload("run", 0, "bottom", "a", state(2.0))
    with pytest.raises(Refused) as refused:
        agg.upload("run", 0, "bottom", "b", bad)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    agg.upload("run", 0, "bottom", "c", state(4.0))
    done = agg.settle("run", 0, {"a": 10, "b": 10, "c": 10})
    assert done.averaged == ["a", "c"] and done.missing == ["b"]
    torch.testing.assert_close(agg.latest("run", 0, "a")[1]["w"], torch.full((2, 2), 3.0))
    assert agg.uploads_refused == 1 and agg.uploads_accepted == 2


def test_a_participant_that_crashed_before_uploading_is_left_out() -> None:
    agg = opened()
    agg.upload("run", 0, "bottom", "a", state(5.0))
    done = agg.settle("run", 0, {"a": 10, "b": 10})
    assert done.missing == ["b"]
    torch.testing.assert_close(agg.latest("run", 0, "a")[1]["b"], torch.full((2,), 5.0))


def test_uploads_outside_an_open_round_or_its_participants_are_refused() -> None:
    agg = opened(("a",))
    with pytest.raises(Refused) as outsider:
        agg.upload("run", 0, "bottom", "z", state(1.0))
    assert outsider.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Refused) as closed:
        agg.upload("run", 1, "bottom", "a", state(1.0))
    assert closed.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(Refused):
        agg.upload("other", 0, "bottom", "a", state(1.0))


def test_no_average_keeps_the_previous_one_and_fetches_wait_for_the_settlement() -> None:
    agg = opened(("a",))
    with pytest.raises(Refused) as early:
        agg.latest("run", 0, "a")  # not settled yet
    assert early.value.code == grpc.StatusCode.FAILED_PRECONDITION
    agg.upload("run", 0, "bottom", "a", state(1.0))
    agg.settle("run", 0, {"a": 10})
    agg.open("run", 1, "bottom", LAYOUT, AggregationRule(), ("a",))
    done = agg.settle("run", 1, {"a": 10})  # a crashed: nothing to average in round 1
    assert done.averaged == [] and done.missing == ["a"]
    round, average = agg.latest("run", 1, "a")
    assert round == 0
    torch.testing.assert_close(average["w"], torch.full((2, 2), 1.0))
    with pytest.raises(Refused):
        agg.open("run", 1, "bottom", LAYOUT, AggregationRule(), ("a",))  # settled rounds stay settled


def test_only_the_runs_clients_fetch_its_average() -> None:
    agg = opened(("a", "b"))
    agg.upload("run", 0, "bottom", "a", state(1.0))
    agg.settle("run", 0, {"a": 10})
    assert agg.latest("run", 0, "b")[0] == 0  # b took part (without an upload): it continues from the average
    with pytest.raises(Refused) as refused:
        agg.latest("run", 0, "outsider")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
