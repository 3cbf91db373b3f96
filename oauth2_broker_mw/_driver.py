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

from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Generic
from typing import ParamSpec
from typing import TypeAlias
from typing import TypeVar

__all__ = ["Call", "Calls", "Flow", "arun", "arun_calls", "call", "run", "run_calls"]

E = TypeVar("E")
R = TypeVar("R")
P = ParamSpec("P")

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


@dataclass(frozen=True, slots=True, repr=False)
class Call(Generic[R]):
    """An effect that is one call with a blocking and an awaitable form (same arguments).

    Orchestration that only chains such calls (off-boarding: list the keys, get each
    provider's broker, forget, delete) is written once as a flow of :class:`Call` effects
    and run by :func:`run_calls` or :func:`arun_calls`, instead of as two hand-kept bodies.
    Build one with :func:`call`. The repr names the function, never the arguments (they may
    be secrets).
    """

    sync: Callable[..., R]
    async_: Callable[..., Awaitable[R]]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]

    def run(self) -> R:
        return self.sync(*self.args, **self.kwargs)

    async def arun(self) -> R:
        return await self.async_(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"Call({getattr(self.sync, '__qualname__', type(self.sync).__name__)})"


#: A flow of :class:`Call` effects that returns an ``R``.
Calls: TypeAlias = Generator[Call[Any], Any, R]


def call(
    sync: Callable[P, R], async_: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
) -> Calls[R]:
    """``result = yield from call(store.list_keys, store.alist_keys, tenant)``.

    Typed: the result is an ``R``, and mypy checks that both forms take these arguments. An
    exception from the call is raised at the ``yield from``, like any effect's.
    """
    result: R = yield Call(sync, async_, args, kwargs)
    return result


def run_calls(flow: Calls[R]) -> R:
    """Run a flow of :class:`Call` effects with their blocking forms."""
    return run(flow, Call.run)


async def arun_calls(flow: Calls[R]) -> R:
    """Run a flow of :class:`Call` effects, awaiting their async forms."""
    return await arun(flow, Call.arun)
