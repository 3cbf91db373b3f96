"""Flows of :class:`Call` effects: one body, run blocking or awaited (issue 8, registry twins)."""

from __future__ import annotations

import asyncio

import pytest

from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._driver import Call
from oauth2_broker_mw._driver import Calls
from oauth2_broker_mw._driver import arun_calls
from oauth2_broker_mw._driver import call
from oauth2_broker_mw._driver import run_calls


class Lookup:
    """A sync and an async method of one call, each recording which form ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def get(self, name: str, *, fail: bool = False) -> str:
        self.ran.append("sync")
        if fail:
            raise LookupError(name)
        return name.upper()

    async def aget(self, name: str, *, fail: bool = False) -> str:
        await asyncio.sleep(0)
        self.ran.append("async")
        if fail:
            raise LookupError(name)
        return name.upper()


def both(lookup: Lookup) -> Calls[list[str]]:
    found = [(yield from call(lookup.get, lookup.aget, "a"))]
    try:
        yield from call(lookup.get, lookup.aget, "b", fail=True)
    except LookupError as exc:  # the call's exception is raised at its yield, in the flow
        found.append(f"missing {exc}")
    found.append((yield from call(lookup.get, lookup.aget, "c")))
    return found


def test_one_flow_runs_with_the_blocking_forms() -> None:
    lookup = Lookup()
    assert run_calls(both(lookup)) == ["A", "missing b", "C"]
    assert lookup.ran == ["sync"] * 3


def test_the_same_flow_awaits_the_async_forms() -> None:
    lookup = Lookup()
    assert asyncio.run(arun_calls(both(lookup))) == ["A", "missing b", "C"]
    assert lookup.ran == ["async"] * 3


def test_an_exception_the_flow_does_not_handle_propagates_as_is() -> None:
    error = LookupError("x")

    def boom() -> str:
        raise error

    async def aboom() -> str:
        raise error

    def flow() -> Calls[str]:
        return (yield from call(boom, aboom))

    with pytest.raises(LookupError) as sync_raised:
        run_calls(flow())
    with pytest.raises(LookupError) as async_raised:
        asyncio.run(arun_calls(flow()))
    assert sync_raised.value is error and async_raised.value is error
    assert error.__cause__ is None


def test_a_call_repr_names_the_function_never_its_arguments() -> None:
    lookup = Lookup()
    secret = Secret("refresh-token-value")
    shown = repr(Call(lookup.get, lookup.aget, (secret.get_secret_value(),), {"k": "v"}))
    assert shown == "Call(Lookup.get)"
    assert "refresh-token-value" not in shown
