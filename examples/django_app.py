"""Django: the WSGI application wrapped in ``BrokerWSGIMiddleware``, a view that signs a call.

One file for the example (settings, URLs, view, WSGI application); in a project the parts go
to ``settings.py``, ``urls.py``, ``views.py`` and ``wsgi.py``.

    .venv/bin/python examples/django_app.py      # runserver on http://127.0.0.1:8000/

Without ``OAUTH2_ISSUER`` / ``OAUTH2_CLIENT_ID`` / ``OAUTH2_CLIENT_SECRET`` a MockProvider on a
loopback port plays the provider (see ``examples/_provider.py``).
"""

from __future__ import annotations

import os
import sys

import django
import httpx2
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest
from django.http import JsonResponse
from django.urls import path

from oauth2_broker_mw import Broker
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware

try:
    from ._provider import provider_config
except ImportError:  # run as a script: python examples/django_app.py
    from _provider import provider_config  # type: ignore[no-redef]

SECRET_KEY = os.environ.get("SECRET_KEY") or os.urandom(32).hex()
BASE_URL = os.environ.get("APP_BASE_URL", "http://127.0.0.1:8000")
if not settings.configured:  # settings.py
    settings.configure(
        SECRET_KEY=SECRET_KEY,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        DEBUG=False,
        WSGI_APPLICATION=f"{__name__}.application",  # runserver serves the wrapped app
    )
    django.setup()
config = provider_config("acme")


# views.py
def profile(request: HttpRequest) -> JsonResponse:
    ctx = request.META["oauth2_broker"]
    with httpx2.Client(auth=ctx.auth("acme")) as client:
        answer = client.get(config.api_url)
    return JsonResponse({"status": answer.status_code, "body": answer.json()})


urlpatterns = [path("api/profile", profile)]  # urls.py

# wsgi.py
broker = Broker(
    config.descriptor,
    client_id=config.client_id,
    client_secret=config.client_secret,
    store=SQLiteStore(os.environ.get("TOKENS_DB", "tokens.db")),
)
application = BrokerWSGIMiddleware(
    get_wsgi_application(),
    brokers={"acme": broker},
    scopes={"acme": ["openid", "email"]},
    secret_key=SECRET_KEY,
    base_url=BASE_URL,
)

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], "runserver", "127.0.0.1:8000", "--noreload"])
