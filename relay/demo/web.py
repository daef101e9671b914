"""The demo page and its endpoints, served by the relay in demo mode only (``RELAY_DEMO``).

``GET /``                 the page (relay/demo/static/demo.html), its ``/static/demo.css`` and
                          ``/static/demo.js``.
``GET /client.js``        the browser client (clients/js/src/client.js); the modules it imports
                          (``/backoff.js``, ``/token.js``) and the rest of clients/js/src are
                          served beside it, so the relative imports resolve unchanged.
``GET /demo/state``       ``Authorization: Bearer``: the user's thumbnails and latest generations.
``GET /demo/gallery``     ``?owner=U``: a public share page's view of U's thumbnails, no auth.
``POST /demo/click``      ``?id=N``: a share-link click, no auth: calls
                          ``public.increment_thumbnail_share_click_count(N)``.

Every other path is left to the relay (``None``). Requests carry no body (websockets' parser
refuses one) and their target is bounded; database reads go through the relay's pool with the
relay's query timeout.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import anyio
import psycopg
from psycopg.rows import dict_row
from websockets.http11 import Request, Response

from relay.app import AppServices
from relay.core.events import dumps
from relay.errors import AuthError, ConfigError
from relay.net.responses import Handler, bearer_token, query_params, response, text

__all__ = ["client_dir", "demo_routes", "handle_demo_request"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
STATIC_FILES: Final = {
    "/static/demo.css": ("demo.css", "text/css; charset=utf-8"),
    "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
}
JS_TYPE: Final = "text/javascript; charset=utf-8"
JSON_TYPE: Final = "application/json"
MAX_TARGET: Final = 2048  # path and query of a demo request
MAX_OWNER: Final = 256
MAX_ID: Final = 2**63 - 1
GENERATIONS: Final = 20
THUMBNAILS: Final = 500  # per answer: a demo user has a handful
MODULE_NAME: Final = re.compile(r"/([A-Za-z0-9_-]{1,64}\.js)")
# The page loads nothing from elsewhere; images are same-origin or data: URLs.
PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NO_STORE: Final = ("Cache-Control", "no-store")
NOSNIFF: Final = ("X-Content-Type-Options", "nosniff")

Route = Callable[[AppServices, Request, Mapping[str, str]], Awaitable[Response]]


class _Refused(Exception):
    """An answer other than 200, as JSON."""

    def __init__(self, status: int, error: str, **extra: str) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, **extra}


def client_dir() -> Path:
    """The browser client's modules: $RELAY_CLIENT_DIR, the checkout, or the installed copy."""
    candidates = []
    if env := os.environ.get("RELAY_CLIENT_DIR"):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "clients" / "js" / "src")
    candidates.append(Path(sys.prefix) / "share" / "pgrelay" / "client")
    for candidate in candidates:
        if (candidate / "client.js").is_file():
            return candidate
    raise ConfigError(
        "clients/js/src/client.js not found: set RELAY_CLIENT_DIR to the folder that holds it"
    )


def demo_routes(services: AppServices) -> Handler:
    """The demo's routes, handed to the relay's HTTP shell (``run_relay(extra_routes=...)``)."""

    async def handle(request: Request) -> Response | None:
        return await handle_demo_request(services, request)

    return handle


async def handle_demo_request(services: AppServices, request: Request) -> Response | None:
    """The demo's answer to this request, or None for a path the demo does not serve."""
    path = request.path.split("?", 1)[0]
    route = _route(path)
    if route is None:
        return None
    method, handler = route
    if len(request.path) > MAX_TARGET:
        return text(414, "request target too long\n")
    if request.method != method:
        return response(
            405, f"only {method}\n".encode(), "text/plain; charset=utf-8", [("Allow", method)]
        )
    try:
        query = _query(request.path)
        return await handler(services, request, query)
    except _Refused as exc:
        return _json(exc.status, exc.body)


def _route(path: str) -> tuple[str, Route] | None:
    if path == "/":
        return "GET", _page
    if path in STATIC_FILES:
        return "GET", _static
    if path == "/demo/state":
        return "GET", _state
    if path == "/demo/gallery":
        return "GET", _gallery
    if path == "/demo/click":
        return "POST", _click
    if MODULE_NAME.fullmatch(path):
        return "GET", _module
    return None


def _query(target: str) -> dict[str, str]:
    try:
        return query_params(target, max_fields=8)
    except ValueError:
        raise _Refused(400, "too many query parameters") from None


def _json(status: int, body: object) -> Response:
    return response(status, dumps(body).encode(), JSON_TYPE, [NO_STORE, NOSNIFF])


# -- files -----------------------------------------------------------------------------------


async def _page(services: AppServices, request: Request, query: Mapping[str, str]) -> Response:
    body = await anyio.Path(STATIC_DIR / "demo.html").read_bytes()
    headers = [NO_STORE, NOSNIFF, ("Content-Security-Policy", PAGE_CSP),
               ("Referrer-Policy", "no-referrer")]  # fmt: skip
    return response(200, body, "text/html; charset=utf-8", headers)


async def _static(services: AppServices, request: Request, query: Mapping[str, str]) -> Response:
    name, content_type = STATIC_FILES[request.path.split("?", 1)[0]]
    body = await anyio.Path(STATIC_DIR / name).read_bytes()
    return response(200, body, content_type, [NO_STORE, NOSNIFF])


async def _module(services: AppServices, request: Request, query: Mapping[str, str]) -> Response:
    """One module of the browser client, by bare file name: nothing outside its folder."""
    match = MODULE_NAME.fullmatch(request.path.split("?", 1)[0])
    assert match is not None
    try:
        folder = client_dir().resolve()
    except ConfigError as exc:
        return text(500, f"{exc}\n")
    path = (folder / match.group(1)).resolve()
    if path.parent != folder or not await anyio.Path(path).is_file():
        return text(404, "not found\n")
    body = await anyio.Path(path).read_bytes()
    return response(200, body, JS_TYPE, [NO_STORE, NOSNIFF])


# -- data ------------------------------------------------------------------------------------


async def _state(services: AppServices, request: Request, query: Mapping[str, str]) -> Response:
    """The signed-in user's dashboard: every thumbnail, and the latest generations first."""
    token = bearer_token(request.headers.get("Authorization")) or ""
    try:
        claims = services.authenticator.verify(token, time.time())
    except AuthError as exc:
        services.hub.metrics.auth_failures.labels(exc.reason).inc()
        raise _Refused(401, "token refused", reason=exc.reason) from None
    thumbnails, generations = await _run(
        services,
        [
            ("SELECT id, project_id, title, share_click_count, created_at"
             " FROM public.thumbnails WHERE user_id = %s ORDER BY id LIMIT %s",
             (claims.sub, THUMBNAILS)),
            ("SELECT id, project_id, shot_id, status, url, created_at"
             " FROM public.generations WHERE user_id = %s ORDER BY id DESC LIMIT %s",
             (claims.sub, GENERATIONS)),
        ],
    )  # fmt: skip
    return _json(200, {"user": claims.sub, "thumbnails": thumbnails, "generations": generations})


async def _gallery(services: AppServices, request: Request, query: Mapping[str, str]) -> Response:
    """What a visitor of the owner's share page sees: titles, no counts, no project names."""
    owner = query.get("owner", "")
    if not owner or len(owner) > MAX_OWNER:
        raise _Refused(400, f"owner must be 1 to {MAX_OWNER} characters")
    (thumbnails,) = await _run(
        services,
        [("SELECT id, title FROM public.thumbnails WHERE user_id = %s ORDER BY id LIMIT %s",
          (owner, THUMBNAILS))],
    )  # fmt: skip
    return _json(200, {"owner": owner, "thumbnails": thumbnails})


async def _click(services: AppServices, request: Request, query: Mapping[str, str]) -> Response:
    """A share-link click: one atomic increment in the database; the owner sees it live."""
    raw = query.get("id", "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 0 < int(raw) <= MAX_ID:
        raise _Refused(400, "id must be a positive integer")
    thumbnail_id = int(raw)
    ((row,),) = await _run(
        services,
        [("SELECT public.increment_thumbnail_share_click_count(%s) AS share_click_count",
          (thumbnail_id,))],
    )  # fmt: skip
    count = row["share_click_count"]
    if count is None:
        raise _Refused(404, "no such thumbnail")
    return _json(200, {"id": thumbnail_id, "share_click_count": count})


async def _run(
    services: AppServices, queries: list[tuple[str, tuple[Any, ...]]]
) -> list[list[dict[str, Any]]]:
    """Runs parameterised queries on one pooled connection, within the query timeout."""
    timeout = services.settings.query_timeout
    results = []
    try:
        async with services.pool.connection(timeout=timeout * 2) as conn:
            with anyio.fail_after(timeout):
                async with conn.cursor(row_factory=dict_row) as cur:
                    for sql, params in queries:
                        await cur.execute(sql, params)
                        results.append([_plain(row) for row in await cur.fetchall()])
    except (psycopg.Error, TimeoutError):
        raise _Refused(503, "the database is unreachable, retry") from None
    return results


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
