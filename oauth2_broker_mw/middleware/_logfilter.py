"""``RedactOAuthQuery``: a logging filter that blanks OAuth secrets in logged URLs.

Owns: the one regular expression that finds ``code``, ``state``, tokens, client secrets and
assertions in query strings (``?code=…&state=…``) inside any log message, and the list of the
access loggers of the common servers (uvicorn, hypercorn, gunicorn, werkzeug/Flask,
Django's runserver) that :meth:`RedactOAuthQuery.install` attaches it to.

Framework dev servers and ASGI/WSGI servers log the request line, query included, so the
callback's ``code`` and ``state`` (and any ``access_token`` a provider puts in a URL) end up in
access logs. The middleware cannot reach those loggers; this filter can.

Must not import: the rest of the middleware (standard library only).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Final

__all__ = ["RedactOAuthQuery"]

#: parameters whose value is a secret or a one-time credential (compared case-insensitively)
REDACTED_PARAMS: Final = (
    "code",
    "state",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "client_secret",
    "client_assertion",
    "assertion",
    "code_verifier",
    "device_code",
    "user_code",
    "session_state",
    "password",
    "request_uri",
)

#: the access loggers of the usual servers
ACCESS_LOGGERS: Final = (
    "uvicorn.access",
    "hypercorn.access",
    "gunicorn.access",
    "werkzeug",
    "django.server",
)

_PATTERN: Final = re.compile(
    r"(?P<lead>^|[?&;](?:amp;)?)(?P<name>"
    + "|".join(REDACTED_PARAMS)
    + r")=(?P<value>[^&;\s\"'#]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the value of every secret query parameter replaced by ``[redacted]``."""
    return _PATTERN.sub(lambda m: f"{m['lead']}{m['name']}=[redacted]", text)


def _clean(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactOAuthQuery(logging.Filter):
    """Replace the values of ``code``, ``state``, tokens and secrets in logged URLs.

    Attach it to a logger or a handler; it never drops a record, it rewrites the message::

        RedactOAuthQuery.install()  # uvicorn, hypercorn, gunicorn, werkzeug, django.server
        logging.getLogger("uvicorn.access").addFilter(RedactOAuthQuery())  # one logger

    With ``logging.config.dictConfig`` (Django's ``LOGGING``)::

        "filters": {"redact_oauth": {"()": "oauth2_broker_mw.middleware.RedactOAuthQuery"}}

    ``GET /oauth2/acme/callback?code=abc&state=xyz`` is logged as
    ``GET /oauth2/acme/callback?code=[redacted]&state=[redacted]``. A filter on a logger sees
    only the records logged on that logger itself (not its children's); put it on a handler to
    cover everything the handler writes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # The arguments are rewritten one by one, keeping their shape: uvicorn's and
        # gunicorn's formatters unpack record.args (a 5-tuple, a dict of atoms).
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_clean(a) for a in args)
        elif isinstance(args, Mapping):
            record.args = {k: _clean(v) for k, v in args.items()}
        return True

    @classmethod
    def install(cls, *logger_names: str) -> RedactOAuthQuery:
        """Add one filter to ``logger_names`` (default: the usual access loggers); returns it.

        Idempotent: a logger that already has a ``RedactOAuthQuery`` gets no second one.
        """
        instance = cls()
        for name in logger_names or ACCESS_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactOAuthQuery) for f in logger.filters):
                logger.addFilter(instance)
        return instance
