"""The JWKS file: loaded as its document, refused with one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.ops.keys import load_jwks_file

JWKS = {"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}


def test_load_jwks_file(tmp_path: Path) -> None:
    """A JWKS file loads as its document."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    assert JWKS == load_jwks_file(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"keys": {}}', "not a JWKS"),
        ("[]", "not a JWKS"),
        ('{"keys": [1]}', "not a JWKS"),
    ],
)
def test_load_jwks_file_errors(tmp_path: Path, content: str | bytes | None, fragment: str) -> None:
    """A missing or invalid JWKS file is a one-line ConfigError naming the file."""
    path = tmp_path / "jwks.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_jwks_file(path)
    message = str(err.value)
    assert fragment in message
    assert str(path) in message
    assert "\n" not in message
