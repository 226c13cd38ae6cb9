"""fedavg: the unsplit baseline. Only weights cross the wire; the server FedAvgs them by samples; one
client evaluates the global model locally and reports in its PhaseDone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from parallel_fakes import client_data, make_config, run

from slperf.common.models import build_model
from slperf.common.paradigms.kit.aggregate import fedavg


def _state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def test_no_activations_cross_only_weights():
    config = make_config(paradigm="fedavg", clients=3, epochs=2, max_train_samples=300)
    fed = run(config)
    model_bytes = _state_bytes(fed.server.global_state)
    for conn in fed.conns:
        kinds = set(fed.wire.kinds(client=conn.client_id))
        assert kinds <= {"model_state", "request_weights", "train", "evaluate", "phase_done"}, kinds
        assert "cut_tensor" not in kinds and "cut_reply" not in kinds
        # per round: the model down, the model up, nothing else with a tensor in it
        ups = fed.wire.select(client=conn.client_id, direction="up", kind="model_state")
        assert len(ups) == 2
        assert fed.wire.bytes(conn.client_id, "up") == 2 * model_bytes
    trains = fed.wire.select(direction="down", kind="train")
    assert len(trains) == 6
    evaluations = fed.wire.select(direction="down", kind="evaluate")
    # every client evaluates the same global model (the result is the median report, cross-checked)
    assert sorted(e.client for e in evaluations) == ["c1", "c1", "c2", "c2", "c3", "c3"]


def test_global_model_is_the_sample_weighted_average_and_evaluation_is_the_clients_report():
    config = make_config(
        paradigm="fedavg", clients=3, partition_method="hetero", partition_alpha=0.5, max_train_samples=300
    )
    fed = run(config)
    uploads = [
        (e.payload[0], fed.rounds[0].per_client[e.client].samples)
        for e in fed.wire.select(direction="up", kind="model_state")
    ]
    assert len({n for _, n in uploads}) > 1
    for name, tensor in fedavg(uploads).items():
        torch.testing.assert_close(fed.server.global_state[name], tensor)
    assert fed.rounds[0].extra["model_shift"] > 0
    # the evaluation: the global model scored locally by the client on the whole test set
    model = build_model(config.model, (1, 28, 28), 10, config.seed)
    model.load_state_dict(fed.server.global_state)
    model.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for x, y in client_data(config, 0).test.batches(0, shuffle=False):
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    result = fed.evals[0]
    assert result.samples == n == 200
    assert result.accuracy == correct / n
    assert abs(result.loss - loss / n) < 1e-4


def test_a_client_that_drops_out_is_left_out():
    config = make_config(paradigm="fedavg", clients=3, max_train_samples=300)

    def kill_c2(fed):
        def crash(round):
            raise RuntimeError("the client process died")

        fed.clients[1]._train = crash

    fed = run(config, setup=kill_c2)
    assert fed.rounds[0].dropped == ["c2"]
    assert fed.rounds[0].participants == ["c1", "c3"]


def test_the_evaluation_is_the_median_report_so_one_forged_score_is_not_the_result():
    from slperf.common.paradigms.base import EvalResult
    from slperf.common.paradigms.fedavg import median_report

    honest = EvalResult(accuracy=0.6, loss=1.2, samples=200)
    forged = EvalResult(accuracy=1.0, loss=0.0, samples=200)
    result = median_report([("c1", forged), ("c2", honest), ("c3", honest)], round=4)
    assert (result.accuracy, result.loss, result.source) == (0.6, 1.2, "clients")
    (disagreement,) = result.disagreements
    assert (disagreement.client, disagreement.figure, disagreement.claimed, disagreement.counted) == (
        "c1",
        "test_correct",
        200,
        120,
    )
