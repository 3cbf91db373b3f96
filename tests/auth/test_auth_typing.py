"""BrokerAuth as a user's type checker sees it: ``mypy --strict`` on a small program.

One ``BrokerAuth`` is an ``httpx.Auth``, an ``httpx2.Auth`` and a requests ``AuthBase``; each
flow is typed per library (an httpx request gives a flow of httpx requests that takes httpx
responses), ``auth_flow`` included, and a request or response of the wrong kind is an error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parents[2]

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
    program = tmp_path / "usage.py"
    program.write_text(PROGRAM)
    env = {**os.environ, "MYPYPATH": str(ROOT)}  # this checkout's package, not an installed one
    command = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--config-file", "", str(program)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = {
        (int(line), code)
        for line, code in re.findall(
            r"usage\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M
        )
    }
    expected = {
        (number, code)
        for number, text in enumerate(PROGRAM.splitlines(), 1)
        for code in re.findall(r"# error: ([a-z-]+)", text)
    }
    assert found == expected, result.stdout + result.stderr
