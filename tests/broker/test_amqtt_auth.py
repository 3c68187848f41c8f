"""The password check's worker gate (broker.amqtt_auth._PriorityGate)."""

from __future__ import annotations

import contextlib


def test_a_waiter_cancelled_after_a_release_skipped_it_leaves_cleanly():
    """The release pops a cancelled waiter (skipping it); the waiter's own clean-up must not
    then fail to find it (it raised ValueError: <Future cancelled> is not in deque)."""
    import asyncio

    from fedmq.broker.amqtt_auth import _PriorityGate

    async def scenario() -> int:
        gate = _PriorityGate(1)
        held = gate.slot(priority=False)
        await held.__aenter__()
        waiter = asyncio.create_task(gate.slot(priority=False).__aenter__())
        await asyncio.sleep(0)
        queued = gate._waiting[1][0]
        queued.cancel()  # cancelled in the queue before the waiter task runs again
        await held.__aexit__(None, None, None)  # the release pops and skips it
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        return gate._free

    assert asyncio.run(scenario()) == 1
