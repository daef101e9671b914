"""The unmodified npm @supabase/realtime-js (pinned in tests/supabase/package.json) against a
real relay and a real PostgreSQL: runs the Node suite in tests/supabase/test/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import pytest

from tests.support.databases import write
from tests.support.node import node_tool
from tests.support.node import npm_ci as install
from tests.support.paths import REPO
from tests.support.processes import RelayProcess, relay_process
from tests.support.tokens import SECRET

pytestmark = pytest.mark.pg

SUITE = REPO / "tests" / "supabase"
RELAY_ENV = {"RELAY_JWT_LEEWAY": "0s"}  # token expiry is tested in seconds
# A public gallery: each row reaches its owner, and a public one every anonymous visitor and
# every signed-in user too (role audiences, relay/core/audience.py).
GALLERY = (
    "CREATE TABLE public.gallery (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " owner text NOT NULL, public boolean NOT NULL DEFAULT false, title text NOT NULL)",
    "CREATE FUNCTION public.gallery_audience(g public.gallery) RETURNS text[] LANGUAGE sql"
    " IMMUTABLE AS $$ SELECT CASE WHEN g.public"
    " THEN ARRAY[g.owner, 'role:anon', 'role:authenticated'] ELSE ARRAY[g.owner] END $$",
    "SELECT relay.track('public.gallery', audience => 'public.gallery_audience')",
)


def npm_ci() -> None:
    """Installs the pinned Supabase clients from the lock file, once."""
    install(SUITE, "node_modules/@supabase/realtime-js")


def node_env(relay: RelayProcess, dsn: str) -> Mapping[str, str]:
    return {
        **os.environ,
        "RELAY_URL": f"http://127.0.0.1:{relay.port}",
        "RELAY_JWT_SECRET": SECRET,
        "RELAY_DSN": dsn,
        "RELAY_PYTHON": sys.executable,
    }


@pytest.mark.timeout(420)
def test_realtime_js_suite_passes_against_a_real_relay(relay_db: str) -> None:
    """`node --test tests/supabase/test/` passes: the postgres_changes API of a Supabase app,
    unmodified, through pgrelay."""
    node = node_tool("node")
    npm_ci()
    write(relay_db, *GALLERY)
    with relay_process(relay_db, RELAY_ENV) as relay:
        result = subprocess.run(
            [node, "--test", "test/"],
            cwd=SUITE,
            env=node_env(relay, relay_db),
            capture_output=True,
            text=True,
            timeout=360,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed:\n{output}"
    assert "# fail 0" in output, output
    assert "# skipped 0" in output, output  # RELAY_URL reached the suite: nothing skipped
