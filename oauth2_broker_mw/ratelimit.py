"""Rate limits and back-off at the token endpoint: the public names.

``Broker(rate_limit=TokenBucket(10, per=60))`` gives every tenant ten token-endpoint calls a
minute at this provider, counted in the store (so every process shares one budget); callers
beyond it get :class:`~oauth2_broker_mw.RateLimited`. ``Broker(backoff=Backoff(...))`` tunes
how a 429/503 answer closes the provider's gate for every caller. See ``docs/operations.md``.
"""

from __future__ import annotations

from ._core import ratelimit as _ratelimit
from ._core.errors import RateLimited
from ._core.ratelimit import *  # noqa: F403  (the public names of the rate-limit gate)

__all__ = ["RateLimited"]
__all__ += _ratelimit.__all__
