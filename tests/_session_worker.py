"""A second middleware worker in its own process, for ``test_session_processes.py``.

Reads a JSON config from argv[1] (the store spec, the pickled descriptor, the client and the
middleware's secret), serves :func:`build_app` on an ephemeral loopback port, prints that
port, and serves until its stdin is closed. The test process builds the same app in process
as the first worker: the two share only the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import sys
from typing import Any

from _scaleout_worker import build_store

from oauth2_broker_mw import Broker


def build_app(config: dict[str, Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from oauth2_broker_mw.middleware import BrokerMiddleware

    descriptor = pickle.loads(base64.b64decode(config["descriptor"]))
    broker = Broker(
        descriptor,
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        store=build_store(config["store"]),
    )

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"principal": request.state.oauth2_broker.principal})

    async def lease(request: Request) -> JSONResponse:
        got = await request.state.oauth2_broker.alease(descriptor.id)
        token = got.access_token.get_secret_value().encode()
        digest = hashlib.sha256(token).hexdigest()[:16]
        return JSONResponse({"principal": str(got.key.principal), "token": digest})

    app = Starlette(routes=[Route("/whoami", whoami), Route("/lease", lease)])
    app.add_middleware(
        BrokerMiddleware,
        brokers={descriptor.id: broker},
        scopes={descriptor.id: config["scopes"]},
        secret_key=config["secret_key"],
        base_url=config["base_url"],
    )
    return app


def main() -> None:
    from oauth2_broker_mw.testing._mock_transport import serve_app

    app = build_app(json.loads(sys.argv[1]))
    with serve_app(app) as (_host, port):
        print(port, flush=True)
        sys.stdin.read()  # until the test closes our stdin


if __name__ == "__main__":
    main()
