"""pytest plugin (entry point ``pytest11``): fixtures for testing against a MockProvider.

Owns: the ``mock_provider`` and ``mock_provider_url`` fixtures.
Must not import at module level: starlette, uvicorn, httpx2 or anything else heavy; this module
is loaded in every pytest run of anyone who installs oauth2-broker-mw.
"""

from __future__ import annotations
