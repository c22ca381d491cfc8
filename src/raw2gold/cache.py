"""Where raw2gold caches what it downloads: connector virtualenvs, Spark's jars, tools."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of raw2gold's cache: ``$RAW2GOLD_CACHE_DIR`` or ``~/.cache/raw2gold``."""
    configured = os.environ.get("RAW2GOLD_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "raw2gold"
