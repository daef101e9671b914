"""The Supabase dialect's endpoints against a real relay, frame by frame: the apikey handshake,
the Phoenix lifecycle (heartbeat, join, leave, duplicate join, unmatched topic, access_token),
and the documented answers to bad frames."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.support.databases import write
from tests.support.processes import RelayProcess, relay_process
from tests.support.tokens import SECRET

pytestmark = pytest.mark.pg


def jwt_for(ttl: float = 3600, **claims: Any) -> str:
    now = time.time()
    return jwt.encode({"exp": now + ttl, "iat": now, **claims}, SECRET, "HS256")


ANON = jwt_for(role="anon")


def url(relay: RelayProcess, path: str = "/realtime/v1/websocket", **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"apikey": ANON, "vsn": "2.0.0", **params}.items())
    return f"ws://127.0.0.1:{relay.port}{path}?{query}"


class Socket:
    """A raw Phoenix socket (serializer 2.0.0 unless told)."""

    def __init__(self, target: str, vsn: str = "2.0.0", **kwargs: Any) -> None:
        self.ws: ClientConnection = ws_connect(target, open_timeout=5, legacy=True, **kwargs)
        self.vsn = vsn

    def send(self, join_ref: str | None, ref: str | None, topic: str, event: str,
             payload: Any) -> None:  # fmt: skip
        if self.vsn == "2.0.0":
            self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        else:
            self.ws.send(json.dumps({"join_ref": join_ref, "ref": ref, "topic": topic,
                                     "event": event, "payload": payload}))  # fmt: skip

    def recv(self, timeout: float = 5.0) -> Any:
        return json.loads(self.ws.recv(timeout))

    def join(self, topic: str, bindings: list[dict[str, Any]], ref: str = "1",
             **payload: Any) -> Any:  # fmt: skip
        config = {"broadcast": {"ack": False, "self": False}, "presence": {"key": ""},
                  "postgres_changes": bindings, "private": False}  # fmt: skip
        self.send(ref, ref, topic, "phx_join", {"config": config, **payload})
        return self.recv()


def refusal(target: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(target, open_timeout=5, legacy=True, **kwargs)
    answer = refused.value.response
    return answer.status_code, json.loads(answer.body)


def test_handshake_checks_the_apikey_and_vsn(relay: RelayProcess) -> None:
    """The connect token is verified as Supabase does (role and exp required), refusals are 401
    with a JSON error; an unknown sb_ key and a bad vsn are refused; x-api-key wins."""
    assert (401, {"error": "API key is missing"}) == refusal(url(relay, apikey=""))
    assert (401, {"error": "Token has expired"}) == refusal(
        url(relay, apikey=jwt_for(ttl=-60, role="anon")))  # fmt: skip
    assert (401, {"error": "Fields `role` and `exp` are required in JWT"}) == refusal(
        url(relay, apikey=jwt_for(sub="alice")))  # fmt: skip
    assert (401, {"error": "Failed to validate JWT signature"}) == refusal(
        url(relay, apikey=jwt.encode({"role": "anon", "exp": time.time() + 60}, "x" * 40)))  # fmt: skip
    assert (401, {"error": "API key is not valid for this relay"}) == refusal(
        url(relay, apikey="sb_publishable_unknown"))  # fmt: skip
    assert (400, {"error": "Unsupported serializer version (vsn): use 1.0.0 or 2.0.0"}) == (
        refusal(url(relay, vsn="3.0.0")))  # fmt: skip
    socket = Socket(url(relay, apikey=""), additional_headers={"x-api-key": ANON})
    socket.send(None, "1", "phoenix", "heartbeat", {})
    assert [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}] == socket.recv()
    assert 1.0 == relay.metric("relay_auth_failures_total", 'reason="missing_api_key"')


def test_a_publishable_key_is_accepted_when_configured(relay_db: str) -> None:
    """RELAY_SUPABASE_PUBLISHABLE_KEYS makes that sb_publishable_ key an anonymous apikey."""
    key = "sb_publishable_0123456789abcdef"
    with relay_process(relay_db, {"RELAY_SUPABASE_PUBLISHABLE_KEYS": key}) as relay:
        socket = Socket(url(relay, apikey=key, path="/socket/websocket"))
        reply = socket.join(
            "realtime:t", [{"event": "*", "schema": "public", "table": "thumbnails"}]
        )
        assert "ok" == reply[4]["status"]
        assert (401, {"error": "API key is not valid for this relay"}) == refusal(
            url(relay, apikey="sb_secret_0123456789abcdef"))  # fmt: skip


def test_lifecycle_frames(relay: RelayProcess, relay_db: str) -> None:
    """Join replies echo each binding with an id, then the system message; leave replies then
    closes; a duplicate join replaces the channel; an unjoined topic is unmatched; access_token
    gets no reply (a new token re-subscribes: the system message again); serializer 1.0.0
    frames are objects."""
    socket = Socket(url(relay))
    binding = {"event": "INSERT", "schema": "public", "table": "thumbnails"}
    reply = socket.join("realtime:room", [binding, binding], access_token=jwt_for(
        sub="alice", role="authenticated"))  # fmt: skip
    assert reply[:4] == ["1", "1", "realtime:room", "phx_reply"]
    entries = reply[4]["response"]["postgres_changes"]
    assert entries[0] == entries[1] == {**binding, "id": entries[0]["id"]} and entries[0]["id"] > 0
    assert ["1", None, "realtime:room", "system", {"extension": "postgres_changes", "status": "ok",
            "message": "Subscribed to PostgreSQL", "channel": "room"}] == socket.recv()  # fmt: skip
    write(relay_db, "INSERT INTO thumbnails (user_id, project_id) VALUES ('alice', 'p1')")
    push = socket.recv()
    assert [None, None, "realtime:room", "postgres_changes"] == push[:4]
    assert [entries[0]["id"]] == push[4]["ids"]  # one push for the two identical bindings
    socket.send(None, "2", "realtime:other", "access_token", {"access_token": ANON})
    assert {"status": "error", "response": {"reason": "unmatched topic"}} == socket.recv()[4]
    socket.send("1", "3", "realtime:room", "access_token", {"access_token": jwt_for(
        sub="alice", role="authenticated", ttl=7200)})  # fmt: skip
    socket.send(None, "4", "phoenix", "heartbeat", {})
    # access_token: no reply; re-verified, the bindings re-subscribed and said so, as Supabase does
    assert ["1", None, "realtime:room", "system"] == socket.recv()[:4]
    assert [None, "4", "phoenix", "phx_reply"] == socket.recv()[:4]
    again = socket.join("realtime:room", [binding], ref="5")
    assert ["5", "5", "realtime:room", "phx_reply"] == again[:4]
    assert "system" == socket.recv()[3]
    socket.send("5", "6", "realtime:room", "phx_leave", {})
    assert ["5", "6", "realtime:room", "phx_reply", {"status": "ok", "response": {}}] == (
        socket.recv())  # fmt: skip
    assert ["5", "5", "realtime:room", "phx_close", {}] == socket.recv()
    old = Socket(url(relay, vsn="1.0.0"), vsn="1.0.0")
    old.send(None, "1", "phoenix", "heartbeat", {})
    assert {"join_ref": None, "ref": "1", "topic": "phoenix", "event": "phx_reply",
            "payload": {"status": "ok", "response": {}}} == old.recv()  # fmt: skip


def test_join_errors(relay: RelayProcess) -> None:
    """An expired token, a token without role and a private channel are refused at join with
    their reason; a bad filter and an untracked table are system errors after an ok reply."""
    socket = Socket(url(relay))
    binding = {"event": "*", "schema": "public", "table": "thumbnails"}
    expired = socket.join("realtime:a", [binding], access_token=jwt_for(
        ttl=-30, sub="alice", role="authenticated"))  # fmt: skip
    assert {"status": "error", "response": {"reason": "InvalidJWTToken: Token has expired"}} == (
        expired[4])  # fmt: skip
    no_role = socket.join("realtime:a", [binding], ref="2", access_token=jwt_for(sub="alice"))
    assert "InvalidJWTToken: Fields `role` and `exp` are required in JWT" == (
        no_role[4]["response"]["reason"])  # fmt: skip
    socket.send("3", "3", "realtime:p", "phx_join", {"config": {"private": True}})
    assert socket.recv()[4]["response"]["reason"].startswith("PrivateChannelsNotSupported:")
    for ref, bad, message in [
        ("4", {**binding, "filter": "id=foo.1"}, 'Error parsing `filter` params: ["foo", "1"]'),
        ("5", {**binding, "table": "nope"}, "table 'public'.'nope' is not tracked by pgrelay"),
        (
            "6",
            {"event": "*"},
            "No subscription params provided. Please provide at least a "
            "`schema` or `table` to subscribe to",
        ),
        (
            "7",
            {**binding, "filter": "nope=eq.1"},
            "Error parsing `filter` params: invalid column for filter 'nope'",
        ),
    ]:
        assert "ok" == socket.join(f"realtime:b{ref}", [bad], ref=ref)[4]["status"]
        assert {"extension": "postgres_changes", "status": "error", "message": message,
                "channel": f"b{ref}"} == socket.recv()[4]  # fmt: skip
