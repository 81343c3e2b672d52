"""CPU thread defaults applied before torch loads its OpenMP runtime.

OpenMP reads ``OMP_WAIT_POLICY`` once, when the runtime is loaded (at ``import torch``), so
this runs from ``seedq/__init__.py``: every seedq entry point (the ``seedq`` CLI, ``python
-m workers.gpu``) imports the package before torch. With the ACTIVE policy idle OpenMP
threads spin, which made forwards 6-11x slower on a loaded machine (other workers, other
processes); PASSIVE threads sleep. A value the user set (``OMP_WAIT_POLICY=ACTIVE`` on a
dedicated machine) is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"


def default_wait_policy(env: MutableMapping[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY`` to PASSIVE unless it is set already; returns the value."""
    env = os.environ if env is None else env
    return env.setdefault(WAIT_POLICY, DEFAULT_WAIT_POLICY)
