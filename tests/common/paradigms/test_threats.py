"""Every paradigm's declared threat model (``ParadigmSpec.threats``) against what actually crosses the wire: one
tiny round of each paradigm over the in-process harness (the real server half, proxies, sessions and client
daemons; only gRPC is replaced), then, from the decoded envelopes, what reached the server (cut activations,
labels, tensors of a second stage = gradients from a tail, ModelState = client weights) and what reached a client
(gradients, the server's output, weights). A declaration that claims more or less than the wire carries fails.
docs/threat_model.md's table must be the one the declarations render."""

from __future__ import annotations

from pathlib import Path

import pytest
from sl_wire_harness import config_from, run_in_process

from slperf.common.paradigms import registry
from slperf.common.paradigms.threats import Seen, ThreatModel, threat_table
from slperf.common.protocol.types import Phase

TINY = {
    "dataset": "mnist",
    "clients": 2,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 128,
    "max_test_samples": 64,
    "eval_batch_size": 32,
    "seed": 2,
    "client_timeout": 30.0,
}
CONFIGS = {
    "vertical": {
        "dataset": "adult",
        "clients": 3,
        "max_train_samples": 256,
        "data_vertical_list": [6, 4, 4],
        "cut_layer_vertical_list": [4, 3, 2],
        "label_owner": 1,
    },
    "multitask": {"clients": 4, "client_split": [2, 4]},
}
DOC = Path(__file__).resolve().parents[3] / "docs" / "threat_model.md"


def observed(fed, exchange) -> tuple[set[Seen], set[Seen]]:
    """What reached the server and what reached a client in the run, as ``Seen`` kinds, from the wire log."""
    first = exchange.train[0].name if exchange.train else None
    last = exchange.train[-1].name if exchange.train else None
    server: set[Seen] = set()
    client: set[Seen] = set()
    for direction, _, message in fed.log:
        kind = message.WhichOneof("body")
        if direction == "up" and kind == "cut_tensor":
            cut = message.cut_tensor
            if cut.ref.phase == int(Phase.EVAL) or cut.ref.stage == first:
                server.add(Seen.ACTIVATIONS)
            else:
                server.add(Seen.TAIL_GRADIENTS)
            if cut.HasField("labels"):
                server.add(Seen.LABELS)
        elif direction == "up" and kind == "model_state":
            server.add(Seen.CLIENT_WEIGHTS)
        elif direction == "down" and kind == "model_state":
            client.add(Seen.WEIGHTS)
        elif direction == "down" and kind == "cut_reply" and message.cut_reply.HasField("tensor"):
            reply = message.cut_reply
            if reply.ref.phase == int(Phase.TRAIN) and reply.ref.stage == last:
                client.add(Seen.CUT_GRADIENTS)
            else:
                client.add(Seen.SERVER_OUTPUT)
    return server, client


def declared(model: ThreatModel) -> tuple[set[Seen], set[Seen]]:
    return {e.what for e in model.server}, {e.what for e in model.client}


@pytest.mark.parametrize("spec", registry.all_specs(), ids=lambda s: s.name)
def test_declared_threat_model_is_what_crosses_the_wire(spec):
    config = config_from({**TINY, "paradigm": spec.name, **CONFIGS.get(spec.name, {})})
    fed = run_in_process(config)
    assert fed.results, "the round did not run"
    server, client = observed(fed, spec.exchange(config, 0))
    assert declared(spec.threats) == (server, client), f"{spec.name}: declared != on the wire"
    # Where the server sees activations and collects client weights, it holds the producer (white-box inversion).
    assert spec.threats.server_holds_producer == (Seen.ACTIVATIONS in server and Seen.CLIENT_WEIGHTS in server)


def test_labels_never_reach_the_server_in_u_shaped_paradigms():
    for name in ("ushaped", "multitask"):
        model = registry.get(name).threats
        assert not model.server_sees(Seen.LABELS) and model.server_sees(Seen.TAIL_GRADIENTS)


def test_a_declaration_puts_each_kind_on_its_side():
    from slperf.common.paradigms.threats import Exposure

    with pytest.raises(ValueError, match="reaches a client"):
        ThreatModel(server=(Exposure(Seen.CUT_GRADIENTS, "x"),), client=())
    with pytest.raises(ValueError, match="reaches the server"):
        ThreatModel(server=(), client=(Exposure(Seen.LABELS, "x"),))


def test_docs_table_is_the_declarations():
    table = threat_table((s.name, s.threats) for s in registry.all_specs())
    assert table in DOC.read_text(), "docs/threat_model.md: regenerate the table (see the doc's first paragraph)"


def test_details_print_the_threat_model(capsys):
    from click.testing import CliRunner

    from slperf.cli import main

    out = CliRunner().invoke(main, ["paradigms", "--details", "vanilla"]).output
    assert "the server sees:" in out and "labels: with every batch" in out
    assert "the server holds the weights that produced the activations it sees: yes" in out


def test_docs_fed_server_table_is_the_declarations():
    specs = [s for s in registry.all_specs() if s.fed_server_threats is not None]
    assert {s.name for s in specs} == {"splitfed_v1", "splitfed_v2"}
    table = threat_table((f"{s.name} + fed_server", s.fed_server_threats) for s in specs)
    assert table in DOC.read_text(), "docs/threat_model.md: regenerate the fed server table (see its section)"


def test_with_a_fed_server_the_server_sees_no_client_weights():
    for spec in registry.all_specs():
        if spec.fed_server_threats is not None:
            assert not spec.fed_server_threats.server_sees(Seen.CLIENT_WEIGHTS), spec.name
            assert not spec.fed_server_threats.server_holds_producer, spec.name
