"""Group commit on its own: requests grouped into one flush, each keeping its own context
and its own errors."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from inferstream.api.group_commit import GroupCommit
from inferstream.envelope import Envelope, new_envelope

request_of: contextvars.ContextVar[int] = contextvars.ContextVar("request_of", default=-1)


def test_grouped_requests_run_in_their_own_context_and_fail_alone() -> None:
    flushed: list[list[str]] = []
    first_flush_may_end = threading.Event()

    def flush(envelopes: list[Envelope]) -> None:
        if not flushed:
            first_flush_may_end.wait(5)  # the other requests queue behind it: one group
        flushed.append([env.id for env in envelopes])

    group = GroupCommit(flush)

    def prepare(number: int) -> tuple[list[Envelope], int]:
        if number == 3:
            raise ValueError("scan 3 is bad")
        return [new_envelope(b"x", "text/plain", envelope_id=f"scan-{number}")], request_of.get()

    async def one(number: int) -> tuple[list[Envelope], int]:
        request_of.set(number)
        return await group.publish_prepared("acme", lambda: prepare(number))

    async def run() -> list[object]:
        first = asyncio.create_task(one(0))
        await asyncio.sleep(0.2)  # the first flush is running and waits
        rest = [asyncio.create_task(one(n)) for n in range(1, 6)]
        await asyncio.sleep(0.1)
        first_flush_may_end.set()
        return list(await asyncio.gather(first, *rest, return_exceptions=True))

    outcomes = asyncio.run(run())

    assert isinstance(outcomes[3], ValueError)
    for number in (0, 1, 2, 4, 5):
        envelopes, seen = outcomes[number]  # type: ignore[misc]
        assert seen == number  # its own context, though another request's task ran it
        assert [env.id for env in envelopes] == [f"scan-{number}"]
    assert flushed == [["scan-0"], ["scan-1", "scan-2", "scan-4", "scan-5"]]


def test_a_failed_flush_reaches_every_request_of_its_group() -> None:
    def flush(envelopes: list[Envelope]) -> None:
        raise OSError("the bus is full")

    group = GroupCommit(flush)

    async def run() -> list[object]:
        return list(
            await asyncio.gather(
                group.publish_prepared("acme", lambda: ([new_envelope(b"x", "text/plain")], 1)),
                group.publish("acme", [new_envelope(b"y", "text/plain")]),
                return_exceptions=True,
            )
        )

    outcomes = asyncio.run(run())
    assert [str(outcome) for outcome in outcomes] == ["the bus is full"] * 2
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
