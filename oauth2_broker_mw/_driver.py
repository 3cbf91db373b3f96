"""The one generator driver: runs a sans-IO flow, sync or async, to its end.

Owns: the loop that resumes a flow with each effect's result, the rule that *every*
exception raised while executing an effect (``BaseException`` included: a
``KeyboardInterrupt`` in a thread, a ``CancelledError`` in a task, a bug in a custom
transport) is thrown back into the flow at its ``yield`` so that the flow can release what
it holds (locks, pending flights) and decide, and the rule that the flow is closed in
``finally`` whatever happens. This is the shape of psycopg's ``waiting.wait`` /
``wait_async``: the flows (broker grants, store operations, middleware handlers, the
signer) say what they wait for, and each caller passes the one function that executes it.

Must not import: httpx/httpx2, starlette, requests, any store driver, the broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeAlias, TypeVar

__all__ = ["Flow", "arun", "run"]

E = TypeVar("E")
R = TypeVar("R")

#: A flow: yields effects of type ``E``, receives each effect's result, returns an ``R``.
Flow: TypeAlias = Generator[E, Any, R]


async def arun(flow: Generator[E, Any, R], execute: Callable[[E], Awaitable[object]]) -> R:
    """Run ``flow`` to completion, awaiting ``execute`` for each yielded effect.

    An exception from ``execute`` is thrown into the flow; if the flow does not handle it, it
    propagates out unchanged (same object, no extra chaining). A cancelled task has its
    ``CancelledError`` thrown into the flow like any other exception, so the flow can yield
    the effects that release its lock before it re-raises.
    """
    try:
        effect = next(flow)
        while True:
            try:
                result = await execute(effect)
            except BaseException as exc:  # the flow decides, and releases what it holds
                effect = flow.throw(exc)
            else:
                effect = flow.send(result)
    except StopIteration as stop:
        answer: R = stop.value
        return answer
    finally:
        flow.close()


def run(flow: Generator[E, Any, R], execute: Callable[[E], object]) -> R:
    """Run ``flow`` to completion, executing each yielded effect with blocking ``execute``.

    This is :func:`arun` itself, not a copy of its loop: ``execute`` is wrapped in a
    coroutine that never suspends, so the :func:`arun` coroutine runs to its end in one
    ``send`` with no event loop, and every rule above holds for both colours by
    construction (a ``KeyboardInterrupt`` from ``execute`` is thrown into the flow too).
    """

    async def ready(effect: E) -> object:
        return execute(effect)

    steps = arun(flow, ready)
    try:
        steps.send(None)
    except StopIteration as stop:
        answer: R = stop.value
        return answer
    raise AssertionError("unreachable: ready() never suspends")  # pragma: no cover
