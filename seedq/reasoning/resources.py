"""The data files seedq ships under ``seedq/data`` (prompt pools, few-shot examples, samples)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def data_path(*parts: str) -> Path:
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"seedq data file missing: {path}")
    return path


@lru_cache(maxsize=16)
def load_json(*parts: str) -> Any:
    """A packaged JSON file, parsed once. Callers must not mutate the result."""
    with data_path(*parts).open(encoding="utf-8") as handle:
        return json.load(handle)
