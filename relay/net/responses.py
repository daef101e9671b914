"""HTTP answers and request parts, written once for every route on the relay's port.

The websockets server answers plain HTTP requests from ``process_request`` with a ``Response``;
these helpers build them and read what a request carries (a bearer token, a bounded query
string, repeated headers). The long-poll, the health and metrics routes and handed-in routes
(the demo's) all use them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = [
    "Handler",
    "bearer_token",
    "cors_headers",
    "query_params",
    "repeated_header",
    "response",
    "text",
]

# A route handed in to the shell: its answer to a request, or None for a path it does not serve.
Handler = Callable[[Request], Awaitable[Response | None]]
# Headers read as one value: a request repeating one is refused (400), never guessed at.
SINGLE_HEADERS: Final = ("Origin", "Authorization")
MAX_QUERY_FIELDS: Final = 32


def response(
    status: int, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    """An answer with its content type and length, plus ``extra`` headers."""
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    headers.update(extra)
    return Response(status, HTTPStatus(status).phrase, headers, body)


def text(status: int, body: str) -> Response:
    """A plain-text answer."""
    return response(status, body.encode(), "text/plain; charset=utf-8")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None without one."""
    if authorization is None or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip()


def query_params(target: str, max_fields: int = MAX_QUERY_FIELDS) -> dict[str, str]:
    """The query string of a request target, the last value of each name winning. Raises
    ValueError past ``max_fields`` fields."""
    params = parse_qs(urlsplit(target).query, keep_blank_values=True, max_num_fields=max_fields)
    return {key: values[-1] for key, values in params.items()}


def repeated_header(headers: Headers) -> str | None:
    """The first of SINGLE_HEADERS the request sends more than once, or None."""
    for name in SINGLE_HEADERS:
        if len(headers.get_all(name)) > 1:
            return name
    return None


def cors_headers(
    origin: str | None, methods: str = "GET, OPTIONS", headers: str = "Authorization"
) -> list[tuple[str, str]]:
    """CORS for a browser app on another origin (long-polls, streams, tickets). The Origin was
    checked against the allow-list already; the token travels in a header, never in cookies."""
    if origin is None:
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", methods),
        ("Access-Control-Allow-Headers", headers),
        ("Access-Control-Max-Age", "600"),
        ("Vary", "Origin"),
    ]
