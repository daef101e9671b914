"""TLS: with a certificate and key configured the relay speaks wss://."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect as ws_connect

from tests.support.processes import relay_process
from tests.support.tokens import token

pytestmark = pytest.mark.pg


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_serves_wss_with_the_configured_certificate(relay_db: str, tmp_path: Path) -> None:
    """With RELAY_TLS_CERT and RELAY_TLS_KEY the relay speaks wss:// with that certificate."""
    cert, key = self_signed(tmp_path)
    env = {"RELAY_TLS_CERT": str(cert), "RELAY_TLS_KEY": str(key)}
    with relay_process(relay_db, env) as relay:
        context = ssl.create_default_context(cafile=str(cert))
        url = f"wss://127.0.0.1:{relay.port}/v1/ws"
        with ws_connect(url, ssl=context, open_timeout=5,
                        additional_headers={"Authorization": f"Bearer {token('alice')}"}) as ws:  # fmt: skip
            assert "ready" == json.loads(ws.recv(5))["type"]


def test_tls_serves_server_sent_events(relay_db: str, tmp_path: Path) -> None:
    """An SSE stream over https:// starts as over http://: retry, then the ready event."""
    cert, key = self_signed(tmp_path)
    env = {"RELAY_TLS_CERT": str(cert), "RELAY_TLS_KEY": str(key)}
    with relay_process(relay_db, env) as relay:
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", relay.port, context=context, timeout=5)
        conn.request("GET", "/v1/sse?table=thumbnails",
                     headers={"Authorization": f"Bearer {token('alice')}"})  # fmt: skip
        response = conn.getresponse()
        assert (200, "text/event-stream") == (response.status, response.getheader("Content-Type"))
        lines = [response.readline() for _ in range(4)]
        assert lines[0].startswith(b"retry: ") and lines[2] == b"event: ready\n", lines
        assert "alice" == json.loads(lines[3][len(b"data: ") :])["user"]
        conn.close()
