"""Handshake admission against a real relay: the websocket kill switch, the Origin allow-list,
per-address limits, and JWKS keys (with the algorithm-confusion refusal)."""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import time
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from relay.net.websocket import forget_handshake
from tests.support.clients import Client, close_of, poll
from tests.support.processes import relay_process

pytestmark = pytest.mark.pg


def test_websocket_kill_switch_keeps_polling_working(relay_db: str) -> None:
    """RELAY_WEBSOCKETS=off refuses the websocket handshake with 503; long-polling still serves."""
    with relay_process(relay_db, {"RELAY_WEBSOCKETS": "off"}) as relay:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(relay.url, open_timeout=5, legacy=True)
        assert 503 == refused.value.response.status_code
        assert 200 == poll(relay, "alice", table="generations")[0]
        assert 1.0 == relay.metric("relay_handshakes_refused_total", 'reason="websockets_off"')


def test_origin_outside_the_allow_list_is_refused_and_counted(relay_db: str) -> None:
    """A handshake from an unlisted Origin gets 403 and is counted; a listed Origin connects."""
    env = {"RELAY_ALLOWED_ORIGINS": "https://app.example"}
    with relay_process(relay_db, env) as relay:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(
                relay.url, origin=Origin("https://evil.example"), open_timeout=5, legacy=True
            )
        assert 403 == refused.value.response.status_code
        ok = ws_connect(
            relay.url, origin=Origin("https://app.example"), open_timeout=5, legacy=True
        )
        ok.close()
        assert 1.0 == relay.metric("relay_handshakes_refused_total", 'reason="origin"')


def test_one_address_past_its_limit_is_refused_while_others_connect(relay_db: str) -> None:
    """Open connections per address are capped with 429; a connection from another address still works."""
    env = {"RELAY_MAX_CONNECTIONS_PER_IP": "3", "RELAY_TRUSTED_PROXIES": "127.0.0.1"}
    with relay_process(relay_db, env) as relay:
        mine = [
            ws_connect(
                relay.url,
                additional_headers={"X-Forwarded-For": "203.0.113.1"},
                open_timeout=5,
                legacy=True,
            )
            for _ in range(3)
        ]
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(
                relay.url,
                additional_headers={"X-Forwarded-For": "203.0.113.1"},
                open_timeout=5,
                legacy=True,
            )
        assert 429 == refused.value.response.status_code
        other = Client(relay.url, "bob", header=True)
        other.ready()
        assert 1.0 == relay.metric("relay_handshakes_refused_total", 'reason="ip_connections"')
        for ws in mine:
            ws.close()
        time.sleep(0.3)
        ws_connect(
            relay.url,
            additional_headers={"X-Forwarded-For": "203.0.113.1"},
            open_timeout=5,
            legacy=True,
        ).close()


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_jwks_keys_accept_rs256_and_refuse_algorithm_confusion(
    relay_db: str, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """With a JWKS file, an RS256 token is accepted; an HS256 token signed with the public key is refused."""
    public = rsa_key.public_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    now = time.time()
    good = jwt.encode({"sub": "alice", "exp": now + 600}, rsa_key, "RS256", headers={"kid": "k1"})
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"sub": "alice", "exp": now + 600}).encode())
    forged = f"{head}.{body}." + b64(
        hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    )

    with relay_process(relay_db, {"RELAY_JWT_SECRET": "", "RELAY_JWKS_FILE": str(jwks)}) as relay:
        ok = Client(relay.url)
        ok.send({"type": "auth", "token": good})
        assert "alice" == ok.ready()["user"]
        bad = Client(relay.url)
        bad.send({"type": "auth", "token": forged})
        with pytest.raises(ConnectionClosed) as closed:
            bad.recv(5)
        assert (4001, "bad_algorithm") == close_of(closed.value)


def test_forgetting_the_handshake_frees_every_header_the_client_sent() -> None:
    """After forget_handshake no Headers object holding the client's Cookie is alive, though the
    protocol's parser still holds the request (it was kept for the connection's life before)."""
    protocol = ServerProtocol()
    protocol.receive_data(
        b"GET /v1/ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Cookie: session=secret\r\n\r\n"
    )
    [request] = protocol.events_received()
    assert isinstance(request, Request)
    held = SimpleNamespace(request=request, response=protocol.accept(request))
    del request

    def cookies() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Headers and "Cookie" in o)

    assert 1 == cookies()
    forget_handshake(held)  # type: ignore[arg-type]
    assert (0, [], 101) == (cookies(), list(held.request.headers), held.response.status_code)
    assert protocol.parser is not None  # still running, still holding the request
