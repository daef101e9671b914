"""Token verification: JWTs signed with HS256 (a shared secret) or RS256 / ES256 (a JWKS).

Pure: the clock is passed in (``now``, unix seconds), keys are loaded once at construction, and
nothing here does I/O except ``load_jwks_file``, which the configuration calls at startup.

What a token must be to pass, checked in this order; the first failure is the ``AuthError``
reason, a bounded set (``AUTH_FAILURE_REASONS``) used as a metric label and a close reason:

``malformed``      a string of at most ``max_token_bytes`` ASCII characters, three segments, a
                   decodable header and a JSON object payload; exp, nbf and iat, where present,
                   finite numbers.
``bad_algorithm``  the header's ``alg`` is allowed for the key material configured: HS256 only
                   with an HS256 secret, RS256 only with RSA keys of the JWKS, ES256 only with EC
                   P-256 keys. ``none`` and everything else is refused, and so is algorithm
                   confusion: an HS256 token is never checked against a JWKS public key.
``unknown_key``    the header's ``kid`` names a key of the JWKS; without a kid, the JWKS has
                   exactly one key.
``bad_signature``  the signature verifies.
``missing_exp``    ``exp`` is present.
``expired``        ``exp + leeway > now``.
``not_yet_valid``  ``nbf - leeway <= now`` and ``iat - leeway <= now``, where present.
``bad_issuer``     ``iss`` equals the configured issuer (only when one is configured).
``bad_audience``   ``aud`` (a string or a list of them) contains the configured audience (only
                   when one is configured).
``missing_sub``    ``sub`` is a non-empty string, unless the token's ``role`` is one of the
                   configured ``anonymous_roles`` (Supabase's anon key has role ``anon`` and no
                   sub): then it is an anonymous token, ``Claims.sub`` empty.
``reserved_sub``   ``sub`` does not start with ``role:`` (audience keys of roles:
                   relay/core/audience.py).
``missing_role``   on ``verify(..., require_role=True)`` only (the Supabase dialect, as Supabase
                   requires it): ``role`` is a non-empty string.
``sub_changed``    on ``refresh`` only: the new token names the same ``sub`` as the current one.

No message ever contains the token, nor any claim of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.types import Options

from relay.errors import AuthError, ConfigError

__all__ = [
    "AUTH_FAILURE_REASONS",
    "DEFAULT_LEEWAY",
    "DEFAULT_MAX_TOKEN_BYTES",
    "ROLE_PREFIX",
    "AuthSettings",
    "Authenticator",
    "Claims",
    "check_jwks_shape",
    "one_line",
]

AUTH_FAILURE_REASONS: Final[frozenset[str]] = frozenset(
    {
        "malformed",
        "bad_algorithm",
        "unknown_key",
        "bad_signature",
        "missing_exp",
        "expired",
        "not_yet_valid",
        "bad_issuer",
        "bad_audience",
        "missing_sub",
        "reserved_sub",
        "missing_role",
        "sub_changed",
    }
)

DEFAULT_LEEWAY: Final = 5.0  # seconds of clock skew tolerated on exp, nbf and iat
DEFAULT_MAX_TOKEN_BYTES: Final = 8192
_MIN_HS256_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: a key at least as long as the hash

# PyJWT checks the signature only; every claim is checked here, against the ``now`` passed in.
# verify_sub / verify_jti are off too: PyJWT would raise its own errors for a non-string sub.
_DECODE_OPTIONS: Final[Options] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


@dataclass(frozen=True)
class AuthSettings:
    """What tokens are accepted. At least one of ``hs256_secret`` and ``jwks`` must be set.

    ``jwks`` is a parsed JWKS document (``{"keys": [...]}``); its RSA keys verify RS256 and its
    EC P-256 keys ES256. Keys marked for encryption (``"use": "enc"``), declared for another
    ``alg``, or of another type are skipped.
    """

    hs256_secret: str | None = field(default=None, repr=False)
    jwks: Mapping[str, Any] | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway: float = DEFAULT_LEEWAY
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    anonymous_roles: frozenset[str] = frozenset()


ROLE_PREFIX: Final = "role:"  # audience keys naming a role; no user id may start with it


@dataclass(frozen=True)
class Claims:
    """A verified token: its subject (the user id; empty for an anonymous token), its expiry
    (unix seconds), its ``role`` claim (None without one) and every claim."""

    sub: str
    exp: float
    raw: Mapping[str, Any]
    role: str | None = None


def one_line(exc: BaseException) -> str:
    """An error's message on one line (for ConfigError texts)."""
    return " ".join(str(exc).split())


def check_jwks_shape(document: object, what: str) -> None:
    """Raises ConfigError, naming ``what``, unless ``document`` has the shape of a JWKS."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f'{what} is not a JWKS: expected a JSON object with a "keys" list')
    if not all(isinstance(k, dict) for k in document["keys"]):
        raise ConfigError(f"{what} is not a JWKS: every key must be a JSON object")


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str  # the only algorithm this key verifies
    jwk: jwt.PyJWK


def _algorithm_for(jwk: Mapping[str, Any]) -> str | None:
    if jwk.get("use", "sig") != "sig":
        return None
    if jwk.get("kty") == "RSA":
        alg = "RS256"
    elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        alg = "ES256"
    else:
        return None
    # A key declared for another algorithm (RS512, PS256...) must not verify this one.
    return alg if jwk.get("alg", alg) == alg else None


def _load_keys(jwks: Mapping[str, Any]) -> tuple[_Key, ...]:
    check_jwks_shape(dict(jwks), "the JWKS")
    keys: list[_Key] = []
    for jwk in jwks["keys"]:
        alg = _algorithm_for(jwk)
        if alg is None:
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ConfigError("the JWKS has a key whose kid is not a string")
        name = f"JWKS key {kid!r}" if kid is not None else "a JWKS key without kid"
        try:
            parsed = jwt.PyJWK(dict(jwk), algorithm=alg)
        except jwt.PyJWTError as exc:
            raise ConfigError(f"{name} is not a valid {alg} key: {one_line(exc)}") from None
        if (weak := parsed.Algorithm.check_key_length(parsed.key)) is not None:
            raise ConfigError(f"{name}: {weak}")
        keys.append(_Key(kid, alg, parsed))
    kids = [k.kid for k in keys if k.kid is not None]
    if len(kids) != len(set(kids)):
        raise ConfigError("the JWKS has two usable keys with the same kid")
    return tuple(keys)


class Authenticator:
    """Verifies tokens against one ``AuthSettings``; keys are parsed once, here.

    Unusable key material is a ConfigError here, never a surprise at the first token. Settings
    with no key at all are accepted and refuse every token (``bad_algorithm``): requiring a key
    is the configuration's decision (it allows none only in insecure_dev).
    """

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._secret: bytes | None = None
        if settings.hs256_secret is not None:
            secret = settings.hs256_secret.encode("utf-8")
            if len(secret) < _MIN_HS256_SECRET_BYTES:
                raise ConfigError(
                    f"the HS256 secret must be at least {_MIN_HS256_SECRET_BYTES} bytes long"
                )
            try:  # refuses a PEM key used as a secret: the classic confusion, on our side
                HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
            except jwt.PyJWTError:
                raise ConfigError(
                    "the HS256 secret looks like a public key or certificate"
                ) from None
            self._secret = secret
        self._keys = _load_keys(settings.jwks) if settings.jwks is not None else ()
        if settings.jwks is not None and not self._keys:
            raise ConfigError("the JWKS has no usable RS256 or ES256 signing key")
        # With neither a secret nor a JWKS (the config's insecure_dev), every token is refused.
        self._algorithms = frozenset(k.alg for k in self._keys) | (
            {"HS256"} if self._secret is not None else set()
        )

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms a token may use with this configuration."""
        return self._algorithms

    def verify(self, token: object, now: float, *, require_role: bool = False) -> Claims:
        """Verifies ``token`` at ``now`` (unix seconds); raises AuthError(reason) if refused."""
        if (
            not isinstance(token, str)
            or len(token) > self.settings.max_token_bytes
            or not token.isascii()
            or token.count(".") != 2
        ):
            raise AuthError("malformed", "the token is not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed", "the token header does not decode") from None
        if "b64" in header:  # RFC 7797 unencoded payloads: no issuer of ours makes them
            raise AuthError("malformed", "the token header is not supported")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("bad_algorithm", "the token's algorithm is not accepted")
        key = self._key_for(alg, header.get("kid"))
        try:
            payload = jwt.decode(token, key, algorithms=[alg], options=_DECODE_OPTIONS)
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "the token signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("bad_algorithm", "the token's algorithm is not accepted") from None
        except jwt.PyJWTError:
            raise AuthError("malformed", "the token payload does not decode") from None
        return self._check_claims(payload, now, require_role)

    def refresh(self, current: Claims, token: object, now: float) -> Claims:
        """Verifies a replacement token; it must name the same ``sub`` as ``current``."""
        claims = self.verify(token, now)
        if claims.sub != current.sub:
            raise AuthError("sub_changed", "the new token is for another subject")
        return claims

    def _key_for(self, alg: str, kid: object) -> bytes | jwt.PyJWK:
        if alg == "HS256":
            assert self._secret is not None  # HS256 is in _algorithms only with a secret
            return self._secret
        if kid is None:
            if len(self._keys) != 1:
                raise AuthError("unknown_key", "the token has no kid and the JWKS has several keys")
            key = self._keys[0]
        else:
            found = [k for k in self._keys if k.kid == kid]
            if not found and len(self._keys) == 1 and self._keys[0].kid is None:
                found = list(self._keys)  # a lone key without kid is the key, whatever the kid
            if not found:
                raise AuthError("unknown_key", "the token's kid is not in the JWKS")
            key = found[0]
        if key.alg != alg:  # e.g. ES256 claimed with the kid of an RSA key
            raise AuthError("bad_algorithm", "the token's algorithm does not match its key")
        return key.jwk

    def _check_claims(self, payload: Mapping[str, Any], now: float, require_role: bool) -> Claims:
        leeway = self.settings.leeway
        exp = _time_claim(payload, "exp")
        nbf = _time_claim(payload, "nbf")
        iat = _time_claim(payload, "iat")
        if exp is None:
            raise AuthError("missing_exp", "the token has no exp")
        if exp + leeway <= now:
            raise AuthError("expired", "the token has expired")
        if (nbf is not None and nbf - leeway > now) or (iat is not None and iat - leeway > now):
            raise AuthError("not_yet_valid", "the token is not valid yet")
        if self.settings.issuer is not None and payload.get("iss") != self.settings.issuer:
            raise AuthError("bad_issuer", "the token is from another issuer")
        if self.settings.audience is not None and not _has_audience(
            payload.get("aud"), self.settings.audience
        ):
            raise AuthError("bad_audience", "the token is for another audience")
        role = payload.get("role")
        role = role if isinstance(role, str) and role else None
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub:
            if role is None or role not in self.settings.anonymous_roles:
                raise AuthError("missing_sub", "the token has no sub")
            sub = ""  # an anonymous token: it reaches what its role's audience key reaches
        elif sub.startswith(ROLE_PREFIX):
            raise AuthError("reserved_sub", f"a sub may not start with {ROLE_PREFIX!r}")
        if require_role and role is None:
            raise AuthError("missing_role", "Fields `role` and `exp` are required in JWT")
        return Claims(sub=sub, exp=exp, raw=MappingProxyType(dict(payload)), role=role)


def _time_claim(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None and name not in payload:
        return None
    # bool is an int; json.loads accepts NaN and Infinity; a huge int overflows float().
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("malformed", f"the token's {name} is not a number")
    try:
        seconds = float(value)
    except OverflowError:
        raise AuthError("malformed", f"the token's {name} is out of range") from None
    if not math.isfinite(seconds):
        raise AuthError("malformed", f"the token's {name} is out of range")
    return seconds


def _has_audience(aud: object, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    if isinstance(aud, list):
        return audience in aud
    return False
