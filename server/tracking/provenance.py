"""Where the running code comes from: the package version and, in a checkout, the git commit."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from federator import __version__


@lru_cache(maxsize=1)
def code_version() -> str:
    """``0.1.0``, or ``0.1.0+g<sha>`` (``.dirty`` when there are uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return __version__
    if not sha:
        return __version__
    return f"{__version__}+g{sha}" + (".dirty" if dirty.strip() else "")
