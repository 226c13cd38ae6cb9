"""A real client daemon with a valid certificate that lies: it runs the honest daemon, but rewrites what it sends
(in the serde functions of its own process, so every message is still well formed and passes the wire checks).

    python -m tests.faults.malicious_client [--claim-samples N] [--forge-eval] [--forge-train]
        [--scale-acts F] [--scale-weights F] [--endless] -- <slperf client args>

--claim-samples N  every training PhaseDone and uploaded ModelState claims N samples
--forge-eval       every evaluation PhaseDone claims a perfect score (correct = samples)
--forge-train      every training PhaseDone claims steps = 10**18 and loss_sum = NaN
--scale-acts F     every training cut tensor is multiplied by F (finite: 1e30 passes the NaN/Inf check)
--scale-weights F  every floating-point tensor of an uploaded ModelState is multiplied by F
--endless          a training pass never ends: the shard is served over and over, valid steps, no PhaseDone
--dump FILE        the last state it uploaded (after any scaling), as safetensors, for the test to compare
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from typing import Any

import torch

from slperf.common.data.loader import ShardLoader
from slperf.common.protocol.messages import ModelState, PhaseDone
from slperf.common.protocol.types import CutTensor, Phase
from slperf.common.wire import serde
from slperf.slclient import daemon


def install(args: argparse.Namespace) -> None:
    phase_done_to_pb, model_state_to_pb, cut_tensor_to_pb = (
        serde.phase_done_to_pb,
        serde.model_state_to_pb,
        serde.cut_tensor_to_pb,
    )

    def lying_phase_done(m: PhaseDone) -> Any:
        s = m.summary
        if m.ref.phase == Phase.TRAIN and args.claim_samples is not None:
            s = dataclasses.replace(s, samples=args.claim_samples)
        if m.ref.phase == Phase.TRAIN and args.forge_train:
            s = dataclasses.replace(s, steps=10**18, loss_sum=float("nan"))
        if m.ref.phase == Phase.EVAL and args.forge_eval:
            s = dataclasses.replace(s, correct=s.samples)
        return phase_done_to_pb(dataclasses.replace(m, summary=s))

    def lying_model_state(m: ModelState, bulk: list[memoryview]) -> Any:
        tensors = m.tensors
        if args.scale_weights is not None:
            tensors = {k: t * args.scale_weights if t.is_floating_point() else t for k, t in tensors.items()}
        samples = args.claim_samples if args.claim_samples is not None else m.num_samples
        if args.dump:
            from safetensors.torch import save_file

            save_file({k: t.contiguous() for k, t in tensors.items()}, args.dump)
        return model_state_to_pb(dataclasses.replace(m, tensors=tensors, num_samples=samples), bulk)

    def lying_cut_tensor(m: CutTensor, bulk: list[memoryview]) -> Any:
        if args.scale_acts is not None and m.ref.phase == Phase.TRAIN:
            m = dataclasses.replace(m, tensor=(m.tensor * args.scale_acts).to(torch.float32))
        return cut_tensor_to_pb(m, bulk)

    serde.phase_done_to_pb = lying_phase_done
    serde.model_state_to_pb = lying_model_state
    serde.cut_tensor_to_pb = lying_cut_tensor
    if args.endless:
        batches = ShardLoader.batches

        def endless(self: ShardLoader, epoch: int, **kw: Any) -> Any:
            if not self.train:
                return batches(self, epoch, **kw)
            return itertools.chain.from_iterable(batches(self, epoch, **kw) for _ in itertools.count())

        ShardLoader.batches = endless  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--claim-samples", type=int)
    parser.add_argument("--forge-eval", action="store_true")
    parser.add_argument("--forge-train", action="store_true")
    parser.add_argument("--scale-acts", type=float)
    parser.add_argument("--scale-weights", type=float)
    parser.add_argument("--endless", action="store_true")
    parser.add_argument("--dump")
    parser.add_argument("client_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    install(args)
    import sys

    from slperf import cli

    sys.argv = ["slperf", "client", *[a for a in args.client_args if a != "--"]]
    assert daemon is not None
    cli.main()


if __name__ == "__main__":
    main()
