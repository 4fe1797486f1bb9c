"""Import each named ``federator`` module first, in a process of its own (for
``test_architecture``): ``python tests/import_alone.py MODULE ...``.

A fresh interpreter per module spends ~2 s importing torch, Flower and MLflow before it gets
to ours, which made the test take minutes. Here one interpreter imports the *third-party*
packages our modules import, then forks a child per module: the child starts with those
loaded and with no ``federator`` module at all, so an import cycle or a missing import among
our own modules fails exactly as in a fresh interpreter. Prints one line per failure
(``module: the error``) and exits 1 if there was any.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the package


def _third_party(root: Path) -> set[str]:
    """Top-level names our modules (not the tests, whose helpers import ours) import that
    are neither ours nor relative."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if parts[0] == "tests" or any(p.startswith(".") for p in parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != "federator" and n not in sys.stdlib_module_names}


def _preload(names: set[str]) -> None:
    for name in sorted(names):
        try:
            importlib.import_module(name)
        except ImportError:  # not installed: the child that needs it shows the error
            continue


def _child(module: str, write_fd: int) -> None:
    try:
        importlib.import_module(module)
        os._exit(0)
    except BaseException:  # noqa: BLE001 - reported to the parent, whatever it is
        os.write(write_fd, traceback.format_exc()[-600:].encode())
        os._exit(1)


def _run(module: str) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(module, write_fd)
    os.close(write_fd)
    return pid, read_fd


def main(modules: list[str]) -> int:
    sys.path.insert(0, str(ROOT.parent))
    _preload(_third_party(ROOT))
    assert not [m for m in sys.modules if m.split(".")[0] == "federator"], "preloaded our own"
    failures: list[str] = []
    pending = list(modules)
    running: dict[int, tuple[str, int]] = {}
    while pending or running:
        while pending and len(running) < 2:  # two at a time: the machine's cores
            module = pending.pop(0)
            pid, fd = _run(module)
            running[pid] = (module, fd)
        pid, status = os.wait()
        module, fd = running.pop(pid)
        with os.fdopen(fd, "rb") as out:
            error = out.read().decode(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            failures.append(f"{module}: {error.strip() or f'exit status {status}'}")
    for line in failures:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
