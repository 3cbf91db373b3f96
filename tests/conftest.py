"""Suite-wide fixtures. The helpers live in importable modules beside this file
(``_fakes``, ``_services``, ``_mp_workers``, ``_scaleout_worker``; ``pythonpath = tests``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from _fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock that stands still until the test moves it with ``clock.advance(seconds)``."""
    return FakeClock()


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``call(obj, "lease", **kw)`` runs ``obj.lease`` or ``asyncio.run(obj.alease)`` (param)."""

    def run(obj: Any, name: str, **kwargs: Any) -> Any:
        if request.param == "sync":
            return getattr(obj, name)(**kwargs)
        return asyncio.run(getattr(obj, "a" + name)(**kwargs))

    return run
