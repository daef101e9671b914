"""More end-to-end behaviour: sequencer takeover, JWKS keys, coalescing windows, TLS."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import signal
import ssl
import time
from pathlib import Path

import jwt
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.helpers import Client, RelayProcess, relay_process, token, wait_until

pytestmark = pytest.mark.pg


def test_sequencer_role_moves_to_the_other_replica_when_its_holder_dies(relay_db: str) -> None:
    """Two replicas: SIGKILL the sequencer's holder; the other takes the role and events keep flowing."""
    first = RelayProcess(relay_db).start()
    wait_until(lambda: first.metric("relay_sequencer_leader") == 1.0, 10, "first replica leads")
    second = RelayProcess(relay_db).start()
    try:
        time.sleep(1.5)  # the second replica tries the lock about once a second
        assert (1.0, 0.0) == (
            first.metric("relay_sequencer_leader"),
            second.metric("relay_sequencer_leader"),
        )
        client = Client(second.url, "alice")
        client.ready()
        client.subscribe("s", "generations")
        first.stop(signal.SIGKILL)
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(20):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)", (str(i),)
                )
        got = [e["row"]["project_id"] for e in client.events(20, timeout=30)]
        assert [str(i) for i in range(20)] == got
        assert 1.0 == second.metric("relay_sequencer_leader")
    finally:
        second.kill()


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
        assert (4001, "bad_algorithm") == (closed.value.rcvd.code, closed.value.rcvd.reason)  # type: ignore[union-attr]


def test_coalesce_window_delivers_one_update_with_the_latest_values(relay_db: str) -> None:
    """Five quick UPDATEs of one row within coalesce_ms arrive as one event with the last value."""
    with relay_process(relay_db) as relay:
        client = Client(relay.url, "alice")
        client.ready()
        with psycopg.connect(relay_db, autocommit=True) as conn:
            conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('alice', 'p')")
            client.subscribe("s", "thumbnails", ops=["UPDATE"], coalesce_ms=1000)
            for _ in range(5):
                conn.execute("SELECT increment_thumbnail_share_click_count(1)")
        events = client.events(1, timeout=5)
        assert [(5, ["share_click_count"])] == [
            (e["row"]["share_click_count"], e["changed"]) for e in events
        ]
        assert [] == client.quiet(1.5)


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
