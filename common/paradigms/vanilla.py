"""Vanilla split learning (Gupta & Raskar 2018; Vepakomma et al. 2018).

Who holds what: each client holds the bottom of the model and its data; the server holds the top and the
loss; labels go up with the activations.

Protocol, per round:
  1. Clients train one after another (a ring, in client-index order).
  2. Before its turn a client receives the latest bottom weights from the server (``set_weights``).
  3. Per batch it sends its cut-layer activations and labels; the server runs the top, takes an SGD step
     and returns the gradient of the activations; the client back-propagates and steps its bottom.
  4. After its turn the server collects the client's bottom (``get_weights``) to hand on to the next one.
  5. After the ring, one client (the last that trained) evaluates: it streams test activations and the
     server scores them with the top.
"""

from __future__ import annotations

from collections.abc import Sequence

from slperf.common.paradigms.base import ClientHandle, ParadigmSpec, RoundResult
from slperf.common.paradigms.kit.bottom_client import BottomClient
from slperf.common.paradigms.kit.rounds import ring
from slperf.common.paradigms.kit.serving import serve_training
from slperf.common.paradigms.kit.top_server import HandedOnBottomServer, top_exchange
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.types import PhaseSummary

DEVIATIONS = """\
* The bottom weights are relayed through the server; SLPerf wrote the module to a shared file, which
  separate silos do not have.
* The hand-off copies weights into the live bottom, so the client's optimiser keeps stepping it. SLPerf
  replaced the module object and left the optimiser on the old one: after the first turn its client
  bottoms never learned.
* A client that drops out loses its turn and the ring goes on (the top keeps the steps it took)."""


class VanillaServer(HandedOnBottomServer):
    """The ring of steps 1-4; evaluation (step 5) and the state are the kit's ``HandedOnBottomServer``'s."""

    async def _turn(self, client: ClientHandle, round: int) -> PhaseSummary:
        await client.set_weights("bottom", self.bottom_state, round)
        summary = await serve_training(self.ctx, client, round, self.top, self.optimizer)
        self.bottom_state, _ = await client.get_weights("bottom", round, expected=self.bottom_state)
        self.last_trained = client.client_id
        return summary

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        return (await ring(clients, lambda c: self._turn(c, round))).to_result()


THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every training and evaluation batch of every client"),
        Exposure(Seen.LABELS, "with every batch"),
        Exposure(Seen.CLIENT_WEIGHTS, "each client's trained bottom after its turn, to hand on to the next"),
    ),
    client=(
        Exposure(Seen.CUT_GRADIENTS, "for each of its training batches"),
        Exposure(Seen.WEIGHTS, "before its turn: the bottom the previous client trained"),
    ),
    producer="it relays the bottom: it sends each client the bottom its turn starts from and evaluates with it",
    notes="each client also receives the bottom the previous client trained on its own data",
)


SPEC = register(
    ParadigmSpec(
        name="vanilla",
        server=VanillaServer,
        client=BottomClient,
        exchange=top_exchange,
        threats=THREATS,
        aliases=("vanilla",),
        summary="sequential ring; bottom weights handed on through the server; labels go to the server",
        deviations=DEVIATIONS,
    )
)
