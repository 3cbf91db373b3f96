"""Suite-wide fixtures. The helpers live in importable modules beside this file
(``_fakes``, ``_services``, ``_mp_workers``, ``_scaleout_worker``; ``pythonpath = tests``).
"""

from __future__ import annotations

import pytest
from _fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock that stands still until the test moves it with ``clock.advance(seconds)``."""
    return FakeClock()
