"""Log a test client in through the app's middleware and a MockProvider, in one call.

Owns: the login as a browser does it (the app's login route, the provider's authorize page,
approve or fill in the form, the app's callback), written once as a generator of steps, and
the two small drivers that run it with a sync or an async test client. Used by
:meth:`MockProvider.login` / :meth:`MockProvider.alogin` and the ``mock_login`` fixture.

Clients: anything with httpx's interface (``starlette.testclient.TestClient``,
``httpx.Client`` / ``httpx2.Client`` over an ASGI or WSGI transport, and their async twins)
and Flask's test client. The provider is reached with its own in-process client, so the
broker under test must use ``provider.client()`` / ``provider.async_client()`` (or
``transport()``) as well.

Must not import: the broker or the middleware (it speaks HTTP to them only).
"""

from __future__ import annotations

import html
import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal
from typing import TypedDict
from urllib.parse import parse_qsl
from urllib.parse import quote
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from .. import _driver

if TYPE_CHECKING:
    from .mock_provider import MockProvider

__all__ = ["LoginOptions", "async_login", "login_flow", "sync_login"]


@dataclass(frozen=True, slots=True)
class _Call:
    to: Literal["app", "provider"]
    method: Literal["GET", "POST"]
    url: str
    form: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    location: str | None
    text: str
    raw: Any


_Flow = Generator[_Call, _Answer, Any]
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


def _fail(step: str, answer: _Answer) -> AssertionError:
    code = re.search(r'id="error-code">([^<]*)<', answer.text)
    detail = f" ({code.group(1)})" if code else ""
    return AssertionError(
        f"mock login: {step} answered {answer.status}{detail}, not a redirect; "
        f"{answer.text[:300]!r}"
    )


class LoginOptions(TypedDict, total=False):
    """The keywords of :meth:`MockProvider.login` and :meth:`MockProvider.alogin`, written once:
    the names and types of :func:`login_flow`'s keyword parameters (mypy checks that they
    agree), whose defaults are there. Both methods pass them straight to ``login_flow``, so a
    misspelt keyword is Python's own ``TypeError`` naming it."""

    user: str | None
    provider: str
    prefix: str
    return_to: str


def login_flow(
    mock: MockProvider,
    *,
    user: str | None = None,
    provider: str = "mock",
    prefix: str = "/oauth2",
    return_to: str = "/",
) -> _Flow:
    """The login's steps, as a generator of calls answered by a driver below. ``provider`` is
    the middleware's name for ``mock`` (its ``brokers=`` key)."""
    user = user or mock.default_subject
    start = yield _Call(
        "app",
        "GET",
        f"{prefix}/{quote(provider, safe='')}/login?return_to={quote(return_to, safe='/')}",
    )
    if start.status not in (302, 303) or start.location is None:
        raise _fail(f"the app's login route {prefix}/{provider}/login", start)
    authorize = start.location
    if mock.auto_approve:
        parts = urlsplit(authorize)
        query = urlencode([*parse_qsl(parts.query), ("login_hint", user)])
        answer = yield _Call("provider", "GET", urlunsplit(parts._replace(query=query)))
    else:
        if mock.users is not None and user not in mock.users:
            raise AssertionError(
                f"mock login: the provider has no user {user!r} (users: {sorted(mock.users)})"
            )
        password = "x" if mock.users is None else mock.users[user]
        page = yield _Call("provider", "GET", authorize)
        hidden = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page.text)}
        form = {**hidden, "username": user, "password": password, "action": "approve"}
        parts = urlsplit(authorize)
        target = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        answer = yield _Call("provider", "POST", target, form)
    if answer.status not in (302, 303) or answer.location is None:
        raise _fail("the provider", answer)
    callback = urlsplit(answer.location)
    # Relative: the callback goes to the host the login started on (its cookies are there).
    done = yield _Call("app", "GET", f"{callback.path}?{callback.query}")
    if done.status != 303:
        raise _fail(f"the app's callback {callback.path}", done)
    return done.raw


def _app_answer(response: Any) -> _Answer:
    headers = response.headers
    flask = hasattr(response, "get_data")
    text = response.get_data(as_text=True) if flask else response.text
    return _Answer(int(response.status_code), headers.get("location"), text, response)


def _is_werkzeug(client: Any) -> bool:
    return type(client).__module__.split(".")[0] in ("flask", "werkzeug")


def _provider_answer(response: Any) -> _Answer:
    return _Answer(response.status_code, response.headers.get("location"), response.text, response)


def sync_login(provider: MockProvider, client: Any, flow: _Flow) -> Any:
    """Run the login ``flow`` through the one driver (:func:`.._driver.run`)."""
    with provider.client() as idp:

        def execute(call: _Call) -> _Answer:
            if call.to == "provider":
                return _provider_answer(idp.request(call.method, call.url, data=call.form))
            if _is_werkzeug(client):
                return _app_answer(client.get(call.url))
            return _app_answer(client.get(call.url, follow_redirects=False))

        return _driver.run(flow, execute)


async def async_login(provider: MockProvider, client: Any, flow: _Flow) -> Any:
    async with provider.async_client() as idp:

        async def execute(call: _Call) -> _Answer:
            if call.to == "provider":
                return _provider_answer(await idp.request(call.method, call.url, data=call.form))
            return _app_answer(await client.get(call.url, follow_redirects=False))

        return await _driver.arun(flow, execute)
