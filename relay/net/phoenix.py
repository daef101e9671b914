"""The Supabase Realtime dialect's endpoints: the handshake's checks and the connection class.

``/realtime/v1/websocket`` (where supabase-js points, ``<url>/realtime/v1``) and
``/socket/websocket`` (where a gateway that maps ``/realtime/v1/*`` to ``/socket/*`` sends it,
as self-hosted Supabase's Kong does) take the same admission as ``/v1/ws``
(relay/net/http.py), then ``phoenix_handshake``: the serializer version (``vsn``, 1.0.0 or
2.0.0; none means 1.0.0) and the connect token, the ``x-api-key`` header or else the ``apikey``
parameter, verified as Supabase Realtime verifies it (``role`` and ``exp`` required). A refusal
is an HTTP error with a JSON ``{"error": ...}`` body, as Supabase answers. ``PhoenixConnection``
is the ordinary connection (bounded queue, slow-client rule, replays) with the dialect's wire
and session (relay/core/phoenix.py, relay/core/channels.py).
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from relay.core.auth import Authenticator, Claims
from relay.core.channels import PhoenixSession
from relay.core.log import LogSource
from relay.core.phoenix import VSN_1, VSNS, PhoenixWire
from relay.core.session import ClientSession
from relay.core.wire import Encoder
from relay.errors import AuthError
from relay.net.hub import Hub
from relay.net.responses import query_params, response
from relay.net.websocket import WebsocketConnection
from relay.ops.config import Settings

__all__ = ["PHOENIX_PATHS", "Handshake", "PhoenixConnection", "phoenix_handshake"]

PHOENIX_PATHS: Final = ("/realtime/v1/websocket", "/socket/websocket")
_PUBLISHABLE_CLAIMS: Final = MappingProxyType({"role": "anon"})


@dataclass(frozen=True, slots=True)
class Handshake:
    """What an accepted handshake hands its connection: serializer, connect claims and token."""

    vsn: str
    claims: Claims
    token: str


def _refusal(status: int, message: str) -> Response:
    return response(status, ('{"error":"' + message + '"}').encode(), "application/json")


def _connect_error(exc: AuthError) -> str:
    if exc.reason == "expired":
        return "Token has expired"
    if exc.reason in ("missing_role", "missing_exp"):
        return "Fields `role` and `exp` are required in JWT"
    if exc.reason == "bad_signature":
        return "Failed to validate JWT signature"
    return "The token provided is not a valid JWT"


def phoenix_handshake(
    request: Request, authenticator: Authenticator, settings: Settings, now: float
) -> Handshake | tuple[Response, str]:
    """The accepted handshake, or the refusal and its reason (a metric label)."""
    try:
        params = query_params(request.path)
    except ValueError:
        return _refusal(400, "Too many query parameters"), "bad_request"
    vsn = params.get("vsn", VSN_1)
    if vsn not in VSNS:
        return _refusal(400, "Unsupported serializer version (vsn): use 1.0.0 or 2.0.0"), "vsn"
    token = request.headers.get("x-api-key") or params.get("apikey") or ""
    if not token:
        return _refusal(401, "API key is missing"), "missing_api_key"
    if token.startswith("sb_"):
        known = any(
            hmac.compare_digest(token.encode(), key.encode())
            for key in settings.supabase_publishable_keys
        )
        if not token.startswith("sb_publishable_") or not known:
            return _refusal(401, "API key is not valid for this relay"), "invalid_api_key"
        return Handshake(vsn, Claims("", math.inf, _PUBLISHABLE_CLAIMS, "anon"), token)
    try:
        claims = authenticator.verify(token, now, require_role=True)
    except AuthError as exc:
        return _refusal(401, _connect_error(exc)), exc.reason
    return Handshake(vsn, claims, token)


class PhoenixConnection(WebsocketConnection):
    """A Supabase-dialect socket: the connection machinery with the dialect's wire and session."""

    dialect = "supabase"

    def __init__(
        self,
        hub: Hub,
        ws: ServerConnection,
        *,
        authenticator: Authenticator,
        source: LogSource,
        tasks: anyio.abc.TaskGroup,
        handshake: Handshake,
    ) -> None:
        self.handshake = handshake
        super().__init__(hub, ws, authenticator=authenticator, source=source, tasks=tasks)

    def _wire(self, epoch: str) -> Encoder:
        return PhoenixWire(self.handshake.vsn, epoch, self.hub.column_types)

    def _session(self, authenticator: Authenticator) -> ClientSession:
        hub = self.hub
        assert isinstance(self.wire, PhoenixWire)
        return PhoenixSession(
            target=self,
            router=self.router,
            queue=self.queue,
            wire=self.wire,
            authenticator=authenticator,
            tables=hub.tracked,
            types=hub.column_types,
            claims=self.handshake.claims,
            token=self.handshake.token,
            limits=self.limits(),
            on_auth_failure=lambda reason: hub.metrics.auth_failures.labels(reason).inc(),
            on_reset=lambda reason: hub.metrics.resets.labels(reason).inc(),
            on_limit=lambda limit: hub.metrics.client_limits.labels(limit).inc(),
        )

    async def _handshake(self) -> bool:
        self._forget_handshake()
        self._log_auth()
        return False
