"""House rules about the shape of the code that a linter cannot see (the layers themselves are
import-linter contracts in pyproject.toml, run by tests/check.py).

* A private module (``_x``) is imported only by modules of its own package; what two packages
  share gets a public name.
* ``server/`` is in rooms: no module lives on its flat floor but the few shared by every room.
* No module is longer than 400 lines.
* Flower's private names, ``setattr`` on a module and ``__dict__`` writes appear only in the
  ``_flwr_compat`` packages (one per side), each with a stock-Flower switch.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "federator"
SKIP = {".venv", "tests", "docs", ".git", "build"}
SERVER_FLOOR = {"__init__.py", "progress.py", "releases.py"}


def _modules() -> dict[str, Path]:
    """Dotted name → file of every module in the package (the repository root *is* it)."""
    out: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        parts = [PACKAGE, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every ``federator.…`` module ``path`` imports (``from a import b`` counts a.b too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _private_owner(name: str) -> str | None:
    """The package a private module belongs to (``a.b._c`` → ``a.b``), else None."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_private_modules_are_imported_only_inside_their_package() -> None:
    modules = _modules()
    offences = []
    for module, path in modules.items():
        for imported in _imports(path, module):
            owner = _private_owner(imported)
            if owner is None or imported not in modules:
                continue
            if not (module == owner or module.startswith(owner + ".")):
                offences.append(f"{module} imports {imported} (private to {owner})")
    assert not offences, "\n".join(offences)


def test_the_rule_sees_a_cross_package_private_import(tmp_path: Path) -> None:
    """The check above can fail: a module outside `client` importing `client._x` is caught."""
    assert _private_owner("federator.client._secagg") == "federator.client"
    assert _private_owner("federator.server.tracking._worker") == "federator.server.tracking"
    assert _private_owner("federator.server.tracking") is None
    f = tmp_path / "m.py"
    f.write_text("from federator.client import _secagg\nfrom . import _x\n")
    assert _imports(f, "federator.server.cli.m") == {
        "federator.client",
        "federator.client._secagg",
        "federator.server.cli",
        "federator.server.cli._x",
    }


def test_server_is_in_rooms() -> None:
    floor = {p.name for p in (ROOT / "server").glob("*.py")}
    assert floor <= SERVER_FLOOR, f"modules on server/'s flat floor: {sorted(floor - SERVER_FLOOR)}"


def test_no_module_is_longer_than_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


def test_paths_named_in_the_docs_exist() -> None:
    """Every `server/…`, `client/…` (and other top-level folder) path the docs name exists."""
    pattern = re.compile(
        r"`((?:server|client|strategies|privacy|simulations|tests|docs)/[A-Za-z0-9_./-]*)`"
    )
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in pattern.findall(page.read_text()):
            looks_like_a_path = path.endswith("/") or "." in path.rsplit("/", 1)[-1]
            if looks_like_a_path and "*" not in path and not (ROOT / path.rstrip("/")).exists():
                missing.append(f"{page.name}: {path}")
    assert not missing, "\n".join(missing)


# The wire's distinctive names (generic ones such as "label" cannot be searched for).
WIRE_VALUES = (
    "num-examples",
    "federator-version",
    "installed-version",
    "secagg-keys",
    "secagg-clipping-range",
    "secagg-max-weight",
    "dp-epsilon",
    "partition-id",
    "num-partitions",
    "pinned-key",
    "privacy-ledger",
    "max-epsilon",
    "privacy-delta",
    "privacy-accountant",
    "dp-noise-seed",
)


def test_wire_names_are_spelled_only_in_the_wire_contract() -> None:
    """Record keys, metric names and node-config keys are written once, in client/wire.py
    (the benchmarks' bare-Flower reference app is exempt: it must not use Federator)."""
    exempt = {ROOT / "client" / "wire.py"}
    offences = []
    for path in _modules().values():
        if path in exempt or "bench" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in WIRE_VALUES:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offences, "\n".join(offences)


def test_every_module_imports_on_its_own() -> None:
    """Each module, imported first in a process of its own (forked after the third-party
    packages are loaded, with none of ours: `tests/import_alone.py`), loads: no import cycle
    hides behind the order in which the tests happen to import things."""
    import subprocess
    import sys

    modules = sorted(m for m in _modules() if not m.endswith("_export_child"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "import_alone.py"), *modules],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
        check=False,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_an_import_cycle_is_caught(tmp_path: Path) -> None:
    """The check above fails when it should: two modules importing each other's names."""
    import subprocess
    import sys

    pkg = tmp_path / "federator_cycle_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from federator_cycle_probe.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from federator_cycle_probe.a import A\nB = 2\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "import_alone.py"), "federator_cycle_probe.a"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
        timeout=280,
    )
    assert done.returncode == 1
    assert "federator_cycle_probe.a:" in done.stdout
    assert "partially initialized module" in done.stdout


def _flower_internals(source: str) -> list[str]:
    """What ``source`` touches of Flower's private side: a private name or module imported
    from flwr, a private attribute of something imported from flwr, ``setattr`` on a name,
    or a write into an object's ``__dict__``."""
    tree = ast.parse(source)
    flower, found = _flower_imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in flower and _private_part(node.attr):
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            if node.func.id == "setattr" and isinstance(node.args[0], ast.Name):
                found.append(f"line {node.lineno}: setattr({node.args[0].id}, …)")
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "__dict__"
        ):
            found.append(f"line {node.lineno}: …__dict__[…]")
    return found


def _flower_imports(tree: ast.Module) -> tuple[set[str], list[str]]:
    """The local names bound to flwr imports, and the private ones among what is imported."""
    flower: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
            names = [node.module or "", *(a.name for a in node.names)]
            found += [f"line {node.lineno}: {n}" for n in names if _private_part(n)]
            flower.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "flwr":
                    flower.add((a.asname or a.name).split(".")[0])
                    found += [f"line {node.lineno}: {a.name}"] if _private_part(a.name) else []
    return flower, found


def _private_part(dotted: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in dotted.split("."))


def test_flowers_internals_are_touched_only_in_the_flwr_compat_packages() -> None:
    offences = [
        f"{path.relative_to(ROOT)} {what}"
        for module, path in _modules().items()
        if "._flwr_compat" not in module
        for what in _flower_internals(path.read_text())
    ]
    assert not offences, "\n".join(offences)


def test_the_flower_rule_sees_each_kind_of_use() -> None:
    source = (
        "import flwr.supernode.nodestate\n"
        "from flwr.supernode.start_client_internal import _push_messages\n"
        "from flwr.supernode import fleet_http_connection as conn\n"
        "from flwr.server import _private\n"
        "x = conn._interval\n"
        "setattr(conn, 'HEARTBEAT_DEFAULT_INTERVAL', 10)\n"
        "msg.metadata.__dict__['_message_id'] = 'x'\n"
        "from flwr.app import Message\n"
        "y = Message.metadata\n"
    )
    found = _flower_internals(source)
    assert [f.split(":")[0] for f in found] == [
        "line 2",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
    ], found
    assert _flower_internals("from flwr.app import Message\nself._client = 1\n") == []
