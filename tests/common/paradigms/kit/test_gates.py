"""The Gate protocol's two implementations: arrival order (SerialGate) and member order (RoundRobinGate)."""

from __future__ import annotations

import asyncio

from slperf.common.paradigms.kit.serving import Gate, RoundRobinGate, SerialGate


async def _steps(gate: Gate, members: dict[str, int]) -> list[str]:
    served: list[str] = []

    async def member(cid: str, steps: int) -> None:
        for _ in range(steps):
            await gate.acquire(cid)
            served.append(cid)
            await asyncio.sleep(0)
            gate.release(cid)
        gate.leave(cid)

    await asyncio.gather(*(member(cid, n) for cid, n in members.items()))
    return served


def test_round_robin_gate_serves_members_in_turn_and_skips_those_who_left():
    served = asyncio.run(_steps(RoundRobinGate(["a", "b", "c"]), {"a": 2, "b": 1, "c": 3}))
    assert served == ["a", "b", "c", "a", "c", "c"]


def test_serial_gate_serves_one_step_at_a_time():
    async def main() -> list[str]:
        gate = SerialGate()
        inside: list[int] = []
        served: list[str] = []

        async def member(cid: str) -> None:
            for _ in range(3):
                await gate.acquire(cid)
                inside.append(1)
                assert len(inside) == 1
                served.append(cid)
                await asyncio.sleep(0)
                inside.pop()
                gate.release(cid)
            gate.leave(cid)

        await asyncio.gather(member("a"), member("b"))
        return served

    assert sorted(asyncio.run(main())) == ["a"] * 3 + ["b"] * 3
