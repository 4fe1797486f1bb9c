"""Run every check Federator's CI runs: lint (with complexity limits), format, types, the
import-layer contracts (pyproject.toml), unit and integration tests.

    python tests/check.py          everything (what `make test` and CI run)
    python tests/check.py --unit   skip the multi-process integration tests

Each step runs even if an earlier one failed; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main() -> int:
    unit_only = "--unit" in sys.argv[1:]
    env = dict(
        os.environ,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    steps: list[tuple[str, list[str]]] = [
        ("ruff lint", [str(BIN / "ruff"), "check", "."]),
        ("ruff format", [str(BIN / "ruff"), "format", "--check", "."]),
        ("mypy (strict)", [str(BIN / "mypy"), "-p", "federator"]),
        ("import contracts", [str(BIN / "lint-imports"), "--no-cache"]),
        # The unit tests run on every core (pytest-xdist): one process would leave a core idle.
        (
            "unit tests",
            [sys.executable, "-m", "pytest", "tests/unit", "-q", "--timeout", "300", "-n", "auto"],
        ),
    ]
    if not unit_only:
        steps.append(
            (
                "integration tests",
                [sys.executable, "-m", "pytest", "tests/integration", "-q", "-m", "integration"],
            )
        )
    # The repository root *is* the `federator` package; mypy finds it through a link named
    # after the package (it cannot follow setuptools' editable-install hook).
    link_dir = Path(tempfile.mkdtemp(prefix="federator-mypy-"))
    (link_dir / "federator").symlink_to(ROOT, target_is_directory=True)
    env["MYPYPATH"] = str(link_dir)
    results = []
    for name, cmd in steps:
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        results.append((name, code, time.monotonic() - t0))
    print("\n=== summary")
    for name, code, secs in results:
        print(f"{'ok  ' if code == 0 else 'FAIL'}  {name:<20} {secs:6.1f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
