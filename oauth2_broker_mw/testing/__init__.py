"""Test helpers: a real OAuth 2.0 / OIDC MockProvider and a pytest plugin.

``MockProvider`` needs the ``starlette`` extra (and ``uvicorn`` for ``serve()``); it is imported
lazily so that ``import oauth2_broker_mw.testing`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from ._mock_config import Fault
from ._mock_config import FaultQueue
from ._mock_config import MockClient
from ._mock_config import MockQuirks
from ._mock_config import RecordedRequest

if TYPE_CHECKING:
    from .mock_provider import MockProvider

__all__ = [
    "Fault",
    "FaultQueue",
    "MockClient",
    "MockProvider",
    "MockQuirks",
    "RecordedRequest",
]


def __getattr__(name: str) -> Any:
    if name == "MockProvider":
        from .mock_provider import MockProvider

        return MockProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
