"""A flow's result type reaches its caller: ``Flow[R]`` run by a driver gives ``R``, no cast.

On the main of 2026-12-05 (issue 8) every flow was a ``Generator[Effect, Any, Any]``, so a
driver's ``run`` returned ``Any`` and each caller re-annotated the result by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _typecheck import mypy_errors

pytest.importorskip("mypy")

PROGRAM = """\
from typing import Any, assert_type

from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw._core.flows import FlowConfig, obtain_flow, revoke_flow
from oauth2_broker_mw._core.model import ScopeSet, StoreKey
from oauth2_broker_mw._drivers import AsyncDriver, SyncDriver
from oauth2_broker_mw._driver import run


def execute(effect: object) -> Any: ...


async def check(cfg: FlowConfig, key: StoreKey, sync: SyncDriver, aio: AsyncDriver) -> None:
    scopes = ScopeSet.of(["read"])
    assert_type(sync.run(obtain_flow(cfg, key, scopes)), TokenRecord)
    assert_type(await aio.run(obtain_flow(cfg, key, scopes)), TokenRecord)
    assert_type(run(revoke_flow(cfg, key), execute), bool)
    revoked: str = sync.run(revoke_flow(cfg, key))  # error: assignment
"""


def test_a_driver_returns_the_flows_result_type(tmp_path: Path) -> None:
    found, expected, output = mypy_errors(PROGRAM, tmp_path)
    assert found == expected, output
