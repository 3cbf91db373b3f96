"""BrokerAuth as a user's type checker sees it: ``mypy --strict`` on a small program.

One ``BrokerAuth`` is an ``httpx.Auth``, an ``httpx2.Auth`` and a requests ``AuthBase``; each
flow is typed per library (an httpx request gives a flow of httpx requests that takes httpx
responses), ``auth_flow`` included, and a request or response of the wrong kind is an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _typecheck import mypy_errors

pytest.importorskip("mypy")

PROGRAM = """\
from collections.abc import AsyncGenerator, Generator
from typing import assert_type

import httpx
import httpx2
import requests

from oauth2_broker_mw import Broker, BrokerAuth


def check(broker: Broker, old: httpx.Request, new: httpx2.Request) -> None:
    auth = BrokerAuth(broker, scopes=["read"])
    as_httpx: httpx.Auth = auth
    as_httpx2: httpx2.Auth = auth
    as_requests: requests.auth.AuthBase = auth
    httpx.Client(auth=auth), httpx.AsyncClient(auth=auth)
    httpx2.Client(auth=auth), httpx2.AsyncClient(auth=auth)
    requests.get("https://api.example.test/", auth=auth)

    Flow1 = Generator[httpx.Request, httpx.Response, None]
    Flow2 = Generator[httpx2.Request, httpx2.Response, None]
    assert_type(auth.sync_auth_flow(old), Flow1)
    assert_type(auth.sync_auth_flow(new), Flow2)
    assert_type(auth.auth_flow(old), Flow1)
    assert_type(auth.auth_flow(new), Flow2)
    assert_type(auth.async_auth_flow(old), AsyncGenerator[httpx.Request, httpx.Response])
    assert_type(auth.async_auth_flow(new), AsyncGenerator[httpx2.Request, httpx2.Response])

    flow = auth.sync_auth_flow(old)
    flow.send(httpx.Response(200))
    flow.send(httpx2.Response(200))  # error: arg-type
    auth.auth_flow(new).send(httpx.Response(200))  # error: arg-type
    auth.sync_auth_flow("https://api.example.test/")  # error: call-overload
"""


def test_a_users_type_checker_sees_each_librarys_flow(tmp_path: Path) -> None:
    found, expected, output = mypy_errors(PROGRAM, tmp_path)
    assert found == expected, output
