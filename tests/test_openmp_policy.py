"""The OpenMP wait policy default: PASSIVE unless the user chose one, set on import."""

from __future__ import annotations

import os
import subprocess
import sys

from seedq.threads import default_wait_policy

PROBE = "import os, seedq; print(os.environ.get('OMP_WAIT_POLICY'))"


def _probe(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_passive_by_default_and_user_value_kept() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _probe(env) == "PASSIVE"
    assert _probe({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    mine: dict[str, str] = {"OMP_WAIT_POLICY": "active"}
    assert default_wait_policy(mine) == "active" and mine == {"OMP_WAIT_POLICY": "active"}
    empty: dict[str, str] = {}
    assert default_wait_policy(empty) == "PASSIVE"
    assert empty == {"OMP_WAIT_POLICY": "PASSIVE"}
