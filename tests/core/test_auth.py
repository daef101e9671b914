"""Authenticator: JWT verification with real keys, one test per refusal reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from relay.core.auth import (
    AUTH_FAILURE_REASONS,
    Authenticator,
    AuthSettings,
    Claims,
)
from relay.errors import AuthError, ConfigError

NOW = 1_800_000_000.0
SECRET = "s3cret-that-is-long-enough-for-hs256!"  # 37 bytes
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def rsa_jwk(key: rsa.RSAPrivateKey = RSA_KEY, **extra: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256", **extra}


def ec_jwk(**extra: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(EC_KEY.public_key()))
    return {**jwk, "kid": "ec-1", "use": "sig", **extra}


JWKS = {"keys": [rsa_jwk(), ec_jwk()]}


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid payload at NOW; an override of None removes that claim."""
    payload = {"sub": "alice", "exp": NOW + 300, "iat": NOW - 10, **overrides}
    return {k: v for k, v in payload.items() if v is not None}


def hs256(payload: Mapping[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(dict(payload), secret, algorithm="HS256")


def rs256(payload: Mapping[str, Any], kid: str | None = "rsa-1", key: Any = RSA_KEY) -> str:
    return jwt.encode(dict(payload), key, algorithm="RS256", headers={"kid": kid} if kid else None)


def es256(payload: Mapping[str, Any], kid: str | None = "ec-1") -> str:
    return jwt.encode(
        dict(payload), EC_KEY, algorithm="ES256", headers={"kid": kid} if kid else None
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def handmade(header: Mapping[str, Any], payload: Mapping[str, Any], key: bytes | None) -> str:
    """A token built by hand: HMAC-SHA256 with ``key``, or an empty signature when None."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    if key is None:
        return signing_input + "."
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def hs_only(**kwargs: Any) -> Authenticator:
    return Authenticator(AuthSettings(hs256_secret=SECRET, jwks=None, **kwargs))


def jwks_only(jwks: Mapping[str, Any] = JWKS, **kwargs: Any) -> Authenticator:
    return Authenticator(AuthSettings(hs256_secret=None, jwks=jwks, **kwargs))


def both(**kwargs: Any) -> Authenticator:
    return Authenticator(AuthSettings(hs256_secret=SECRET, jwks=JWKS, **kwargs))


def refused(auth: Authenticator, token: object, now: float = NOW) -> str:
    """The refusal reason; also checks the error never carries the token."""
    with pytest.raises(AuthError) as err:
        auth.verify(token, now)
    assert err.value.reason in AUTH_FAILURE_REASONS
    if isinstance(token, str) and token:
        assert token not in str(err.value)
        assert token not in repr(err.value)
    assert err.value.__cause__ is None
    return err.value.reason


# -- accepted tokens ------------------------------------------------------------------------


def test_valid_hs256() -> None:
    """An HS256 token signed with the configured secret is accepted."""
    got = hs_only().verify(hs256(claims(role="x")), NOW)
    assert Claims(sub="alice", exp=NOW + 300, raw=got.raw, role="x") == got
    assert "x" == got.raw["role"]


def test_valid_rs256() -> None:
    """An RS256 token from a JWKS RSA key is accepted."""
    assert "alice" == jwks_only().verify(rs256(claims()), NOW).sub


def test_valid_es256() -> None:
    """An ES256 token from a JWKS EC P-256 key is accepted."""
    assert "alice" == jwks_only().verify(es256(claims()), NOW).sub


def test_every_algorithm_with_both_key_sources() -> None:
    """With a secret and a JWKS, each algorithm verifies against its own key material."""
    auth = both()
    assert frozenset({"HS256", "RS256", "ES256"}) == auth.algorithms
    for token in (hs256(claims()), rs256(claims()), es256(claims())):
        assert "alice" == auth.verify(token, NOW).sub


def test_no_kid_with_a_single_key() -> None:
    """A token without kid is verified when the JWKS has exactly one key."""
    assert "alice" == jwks_only({"keys": [rsa_jwk()]}).verify(rs256(claims(), kid=None), NOW).sub


def test_lone_key_without_kid_verifies_any_kid() -> None:
    """A JWKS of one key without a kid verifies tokens whatever their kid says."""
    jwk = {k: v for k, v in rsa_jwk().items() if k != "kid"}
    assert "alice" == jwks_only({"keys": [jwk]}).verify(rs256(claims(), kid="x"), NOW).sub


def test_claims_are_read_only() -> None:
    """Claims.raw cannot be modified by whoever holds it."""
    raw = hs_only().verify(hs256(claims()), NOW).raw
    with pytest.raises(TypeError):
        raw["sub"] = "mallory"  # type: ignore[index]


# -- bad_algorithm ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    """An unsigned token (alg none, any case) is refused, whatever keys are configured."""
    token = handmade({"alg": alg, "typ": "JWT"}, claims(), key=None)
    assert "bad_algorithm" == refused(hs_only(), token)
    assert "bad_algorithm" == refused(both(), token)


def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    """Algorithm confusion: HS256 keyed with the RSA public PEM is refused by a JWKS relay."""
    token = handmade({"alg": "HS256", "kid": "rsa-1"}, claims(), key=RSA_PUBLIC_PEM)
    assert "bad_algorithm" == refused(jwks_only(), token)


def test_hs256_signed_with_the_rsa_public_key_fails_against_the_secret() -> None:
    """With a secret configured too, that forged HS256 token is checked with the secret only."""
    token = handmade({"alg": "HS256", "kid": "rsa-1"}, claims(), key=RSA_PUBLIC_PEM)
    assert "bad_signature" == refused(both(), token)


def test_hs256_without_a_secret_is_refused() -> None:
    """An HS256 token is refused when only JWKS public keys are configured."""
    assert "bad_algorithm" == refused(jwks_only(), hs256(claims()))


def test_rs256_without_a_jwks_is_refused() -> None:
    """An RS256 token is refused when only a secret is configured."""
    assert "bad_algorithm" == refused(hs_only(), rs256(claims()))


def test_other_algorithms_are_refused() -> None:
    """RS384, HS512, PS256 and a missing alg are refused even when a key could verify them."""
    auth = both()
    assert "bad_algorithm" == refused(
        auth, jwt.encode(claims(), RSA_KEY, algorithm="RS384", headers={"kid": "rsa-1"})
    )
    assert "bad_algorithm" == refused(
        auth, jwt.encode(claims(), RSA_KEY, algorithm="PS256", headers={"kid": "rsa-1"})
    )
    assert "bad_algorithm" == refused(auth, jwt.encode(claims(), SECRET * 2, algorithm="HS512"))
    assert "bad_algorithm" == refused(auth, handmade({"typ": "JWT"}, claims(), SECRET.encode()))


def test_algorithm_must_match_the_kid_key() -> None:
    """ES256 claimed with the kid of an RSA key is refused, not tried against that key."""
    token = es256(claims(), kid="rsa-1")
    assert "bad_algorithm" == refused(jwks_only(), token)


# -- unknown_key / bad_signature ------------------------------------------------------------


def test_unknown_kid() -> None:
    """A kid that is not in the JWKS is refused."""
    assert "unknown_key" == refused(jwks_only(), rs256(claims(), kid="rsa-2"))


def test_no_kid_with_several_keys() -> None:
    """Without a kid the key is ambiguous when the JWKS has several keys."""
    assert "unknown_key" == refused(jwks_only(), rs256(claims(), kid=None))


def test_wrong_hs256_secret() -> None:
    """An HS256 token signed with another secret is refused."""
    token = hs256(claims(), secret="another-secret-that-is-long-enough-too")
    assert "bad_signature" == refused(hs_only(), token)


def test_rs256_signed_by_another_key() -> None:
    """An RS256 token naming our kid but signed by another RSA key is refused."""
    assert "bad_signature" == refused(jwks_only(), rs256(claims(), key=OTHER_RSA_KEY))


def test_tampered_payload() -> None:
    """Changing the payload after signing breaks the signature."""
    header, _, signature = es256(claims()).split(".")
    token = f"{header}.{b64json(claims(sub='mallory'))}.{signature}"
    assert "bad_signature" == refused(jwks_only(), token)


# -- time -----------------------------------------------------------------------------------


def test_expired() -> None:
    """exp + leeway <= now is expired; just inside the leeway is accepted."""
    auth = hs_only()
    assert "expired" == refused(auth, hs256(claims(exp=NOW - 5)))
    assert "expired" == refused(auth, hs256(claims(exp=NOW - 3600)))
    assert "alice" == auth.verify(hs256(claims(exp=NOW - 4.5)), NOW).sub


def test_expiry_is_checked_against_the_now_passed_in() -> None:
    """The same token is valid before its exp and expired after, by the clock given."""
    auth, token = hs_only(leeway=0.0), hs256(claims(exp=NOW + 10))
    assert NOW + 10 == auth.verify(token, NOW + 9.9).exp
    assert "expired" == refused(auth, token, now=NOW + 10)


def test_missing_exp() -> None:
    """A token without exp is refused."""
    assert "missing_exp" == refused(hs_only(), hs256(claims(exp=None)))


def test_nbf_in_the_future() -> None:
    """nbf beyond the leeway is not yet valid; within the leeway it is accepted."""
    auth = hs_only()
    assert "not_yet_valid" == refused(auth, hs256(claims(nbf=NOW + 60)))
    assert "alice" == auth.verify(hs256(claims(nbf=NOW + 4)), NOW).sub


def test_iat_in_the_future() -> None:
    """A token issued in the future (beyond the leeway) is not yet valid."""
    assert "not_yet_valid" == refused(hs_only(), hs256(claims(iat=NOW + 60)))


@pytest.mark.parametrize("exp", ["soon", True, [1], 10**400])
def test_non_numeric_time_claims_are_malformed(exp: object) -> None:
    """exp that is not a finite number (string, bool, list, huge) is malformed."""
    assert "malformed" == refused(hs_only(), hs256(claims(exp=exp)))


def test_infinite_exp_is_malformed() -> None:
    """exp: Infinity (which json.loads accepts) never makes a token immortal."""
    token = handmade(
        {"alg": "HS256"}, claims(exp=float("inf")), key=SECRET.encode()
    )  # json.dumps writes Infinity
    assert "malformed" == refused(hs_only(), token)


# -- subject, audience, issuer --------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "", 42, ["alice"]])
def test_missing_or_invalid_sub(sub: object) -> None:
    """sub absent, empty or not a string is refused."""
    assert "missing_sub" == refused(hs_only(), hs256(claims(sub=sub)))


@pytest.mark.parametrize("role", [None, "", "anon", 7])
def test_no_sub_is_refused_without_anonymous_roles(role: object) -> None:
    """With no anonymous roles configured, a token without sub is refused whatever its role."""
    assert "missing_sub" == refused(hs_only(), hs256(claims(sub=None, role=role)))


def test_anonymous_role_without_sub_is_an_anonymous_token() -> None:
    """A token with no sub whose role is an anonymous role is accepted with an empty sub; any
    other role without sub is still missing_sub."""
    auth = hs_only(anonymous_roles=frozenset({"anon"}))
    got = auth.verify(hs256(claims(sub=None, role="anon")), NOW)
    assert ("", "anon") == (got.sub, got.role)
    assert "missing_sub" == refused(auth, hs256(claims(sub=None, role="authenticated")))
    assert "missing_sub" == refused(auth, hs256(claims(sub=None)))


@pytest.mark.parametrize("sub", ["role:anon", "role:", "role:authenticated"])
def test_a_sub_posing_as_a_role_key_is_refused(sub: str) -> None:
    """A sub starting with role: is refused (reserved_sub): no user id can reach role rows."""
    assert "reserved_sub" == refused(hs_only(), hs256(claims(sub=sub, role="anon")))


def test_require_role() -> None:
    """verify(require_role=True) refuses a token without a string role (missing_role)."""
    auth = hs_only()
    for role in (None, "", 5):
        with pytest.raises(AuthError) as err:
            auth.verify(hs256(claims(role=role)), NOW, require_role=True)
        assert "missing_role" == err.value.reason
    assert (
        "authenticated"
        == auth.verify(hs256(claims(role="authenticated")), NOW, require_role=True).role
    )


def test_audience_when_configured() -> None:
    """With an audience configured, aud must be it or a list containing it."""
    auth = hs_only(audience="relay")
    assert "bad_audience" == refused(auth, hs256(claims(aud="other")))
    assert "bad_audience" == refused(auth, hs256(claims(aud=["other", "api"])))
    assert "bad_audience" == refused(auth, hs256(claims()))
    assert "bad_audience" == refused(auth, hs256(claims(aud={"relay": 1})))
    assert "alice" == auth.verify(hs256(claims(aud="relay")), NOW).sub
    assert "alice" == auth.verify(hs256(claims(aud=["api", "relay"])), NOW).sub


def test_issuer_when_configured() -> None:
    """With an issuer configured, iss must equal it."""
    auth = jwks_only(issuer="https://id.example")
    assert "bad_issuer" == refused(auth, rs256(claims(iss="https://evil.example")))
    assert "bad_issuer" == refused(auth, rs256(claims()))
    assert "alice" == auth.verify(rs256(claims(iss="https://id.example")), NOW).sub


def test_aud_and_iss_unchecked_when_not_configured() -> None:
    """Without an audience or issuer configured, any aud and iss pass."""
    assert "alice" == hs_only().verify(hs256(claims(aud="x", iss="y")), NOW).sub


# -- malformed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        None,
        42,
        b"a.b.c",
        "",
        "only.two",
        "a.b.c.d",
        "!!!.e30.",
        b64json(["alg", "HS256"]) + ".e30.",
        "caf\u00e9.e30.",
    ],
)
def test_malformed(token: object) -> None:
    """Non-strings, wrong segment counts, undecodable headers, non-ASCII are malformed."""
    assert "malformed" == refused(hs_only(), token)


def test_too_long() -> None:
    """A token longer than max_token_bytes is malformed before any decoding."""
    token = hs256(claims(pad="x" * 9000))
    assert "malformed" == refused(hs_only(), token)
    assert "alice" == hs_only(max_token_bytes=20_000).verify(token, NOW).sub


def test_payload_not_an_object() -> None:
    """A correctly signed payload that is not a JSON object is malformed."""
    signing_input = f"{b64json({'alg': 'HS256'})}.{b64json([1, 2])}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert "malformed" == refused(hs_only(), f"{signing_input}.{b64(mac)}")


def test_unencoded_payload_header_is_malformed() -> None:
    """RFC 7797 b64=false tokens are refused."""
    token = handmade({"alg": "HS256", "b64": False, "crit": ["b64"]}, claims(), SECRET.encode())
    assert "malformed" == refused(hs_only(), token)


# -- refresh --------------------------------------------------------------------------------


def test_refresh_same_sub() -> None:
    """refresh accepts a new valid token for the same sub and returns its claims."""
    auth = both()
    current = auth.verify(hs256(claims()), NOW)
    assert NOW + 900 == auth.refresh(current, rs256(claims(exp=NOW + 900)), NOW).exp


def test_refresh_other_sub() -> None:
    """refresh refuses a valid token for another sub."""
    auth = hs_only()
    current = auth.verify(hs256(claims()), NOW)
    with pytest.raises(AuthError) as err:
        auth.refresh(current, hs256(claims(sub="bob")), NOW)
    assert "sub_changed" == err.value.reason


def test_refresh_still_verifies() -> None:
    """refresh refuses an invalid token with that token's own reason."""
    auth = hs_only()
    current = auth.verify(hs256(claims()), NOW)
    with pytest.raises(AuthError) as err:
        auth.refresh(current, hs256(claims(exp=NOW - 60)), NOW)
    assert "expired" == err.value.reason


def test_reason_set_is_exactly_what_is_tested() -> None:
    """AUTH_FAILURE_REASONS lists every reason and nothing else."""
    assert {
        "malformed",
        "bad_algorithm",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "missing_exp",
        "missing_sub",
        "reserved_sub",
        "missing_role",
        "bad_audience",
        "bad_issuer",
        "sub_changed",
    } == AUTH_FAILURE_REASONS


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (AuthSettings(hs256_secret="short", jwks=None), "at least 32 bytes"),
        (
            AuthSettings(hs256_secret=RSA_PUBLIC_PEM.decode(), jwks=None),
            "looks like a public key",
        ),
        (AuthSettings(hs256_secret=None, jwks={"keys": "nope"}), "not a JWKS"),
        (
            AuthSettings(
                hs256_secret=None,
                jwks={
                    "keys": [
                        {"kty": "oct", "k": b64(SECRET.encode())},
                        rsa_jwk(use="enc"),
                        rsa_jwk(alg="RS512"),
                    ]
                },
            ),
            "no usable",
        ),
        (
            AuthSettings(
                hs256_secret=None,
                jwks={
                    "keys": [
                        rsa_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024))
                    ]
                },
            ),
            "1024 bits",
        ),
        (AuthSettings(hs256_secret=None, jwks={"keys": [rsa_jwk(), rsa_jwk()]}), "same kid"),
        (AuthSettings(hs256_secret=None, jwks={"keys": [{**rsa_jwk(), "n": "!"}]}), "not a valid"),
    ],
)
def test_bad_settings(settings: AuthSettings, fragment: str) -> None:
    """Unusable key material is a ConfigError at construction, never at the first token."""
    with pytest.raises(ConfigError) as err:
        Authenticator(settings)
    assert fragment in str(err.value)


def test_no_keys_refuses_every_token() -> None:
    """Without a secret or a JWKS (insecure_dev), construction works and every token is refused."""
    auth = Authenticator(AuthSettings(hs256_secret=None, jwks=None))
    assert frozenset() == auth.algorithms
    for token in (hs256(claims()), rs256(claims()), handmade({"alg": "none"}, claims(), None)):
        assert "bad_algorithm" == refused(auth, token)


def test_unusable_jwks_keys_are_skipped() -> None:
    """Encryption keys and keys declared for other algorithms are ignored beside usable ones."""
    jwks = {"keys": [rsa_jwk(use="enc", kid="enc"), rsa_jwk(alg="RS512", kid="512"), ec_jwk()]}
    auth = jwks_only(jwks)
    assert frozenset({"ES256"}) == auth.algorithms
    assert "alice" == auth.verify(es256(claims(), kid=None), NOW).sub
    assert "unknown_key" == refused(auth, es256(claims(), kid="512"))


def test_settings_repr_hides_the_secret() -> None:
    """The HS256 secret does not appear in the settings' repr (logs, tracebacks)."""
    assert SECRET not in repr(AuthSettings(hs256_secret=SECRET, jwks=None))
