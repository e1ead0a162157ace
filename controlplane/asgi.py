"""HTTP and websocket routing. Websockets pass the allowed-hosts check and need a logged-in session."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the apps loaded first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from runs.planning.warmup import warm_up_in_background  # noqa: E402
from runs.realtime.routing import websocket_urlpatterns  # noqa: E402
from runs.views.ingest import IngestEndpoint  # noqa: E402

warm_up_in_background()

# The ingest path is answered in front of Django (runs.views.ingest: token auth, requests that arrive together
# stored in one transaction); everything else, websockets included, goes through the normal stack.
application = IngestEndpoint(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)
