"""Task bundles: packed reproducibly, signed, and on a node refused before any of their code is
imported unless intact, allowed by the partner's policy and fully installable — through the
real ClientApp handlers, real keys and a real zip."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import instruction, server_identity
from flwr.app import Context, Message, RecordDict

from federator import ConfigError, TaskBundleRefused
from federator.client import app as client
from federator.client.bundle import (
    BundlePredicate,
    TaskBundle,
    bundle_run_config,
    open_bundle,
    pack_source,
    sign_bundle,
)
from federator.client.keys import generate_keys, load_private_key, load_public_key
from federator.client.mods import refusing
from federator.client.node_policy import parse_policy
from federator.server.deploy.bundle import pack_task
from federator.server.federation.instructions import initial_arrays, instructions_for
from federator.server.plan import FederationPlan, build_plan


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    """Each test imports its own bundled module; none stays behind for the next."""
    path = list(sys.path)
    with server_identity():
        yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m.startswith("tiny_")]:
        del sys.modules[name]


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    return generate_keys(tmp_path / "keys")


def _module(tmp_path: Path, body: str = "") -> tuple[str, Path]:
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    source = tmp_path / "src" / f"{name}.py"
    source.parent.mkdir(exist_ok=True)
    source.write_text(body or "from federator.client.tasks import DIGITS_MLP as task\n")
    return name, source


def _bundle(keys: Any, archive: bytes, module: str, requires: tuple[str, ...] = ()) -> TaskBundle:
    predicate = BundlePredicate(
        task=f"{module}:task",
        module=module,
        requires=requires,
        federation="unit",
        created_at="2026-12-01T00:00:00+00:00",
    )
    return sign_bundle(archive, predicate, load_private_key(keys.private))


def test_packing_is_reproducible_and_the_digest_names_the_code(tmp_path: Path) -> None:
    module, source = _module(tmp_path)
    first = pack_source(source, module=module)
    assert pack_source(source, module=module) == first
    with zipfile.ZipFile(io.BytesIO(first)) as z:
        assert z.namelist() == [f"{module}.py"]
        assert z.read(f"{module}.py") == source.read_bytes()
    source.write_text(source.read_text() + "# changed\n")
    assert hashlib.sha256(pack_source(source, module=module)).digest() != (
        hashlib.sha256(first).digest()
    )


def test_a_package_folder_is_packed_without_caches(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("X = 1\n")
    (pkg / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    with zipfile.ZipFile(io.BytesIO(pack_source(pkg, module="mypkg"))) as z:
        assert z.namelist() == ["mypkg/__init__.py", "mypkg/model.py"]


def _opened(bundle: TaskBundle, keys: Any, **changes: Any) -> TaskBundle:
    args = {"envelope": bundle.envelope, "archive": bundle.archive, "max_bytes": 1 << 20}
    args |= changes
    return open_bundle(
        args["envelope"], args["archive"], pinned=load_public_key(keys.public),
        max_bytes=args["max_bytes"],
    )  # fmt: skip


def test_altered_unsigned_foreign_or_oversized_bundles_are_refused(
    tmp_path: Path, keys: Any
) -> None:
    module, source = _module(tmp_path)
    bundle = _bundle(keys, pack_source(source, module=module), module)
    assert _opened(bundle, keys).digest == hashlib.sha256(bundle.archive).hexdigest()
    altered = bytearray(bundle.archive)
    altered[40] ^= 1
    with pytest.raises(TaskBundleRefused, match="does not match its signed sha256"):
        _opened(bundle, keys, archive=bytes(altered))
    unsigned = bundle.envelope.replace(bundle.envelope[bundle.envelope.index('"signatures"') :],
                                       '"signatures":[]}')  # fmt: skip
    with pytest.raises(TaskBundleRefused, match="is not signed"):
        _opened(bundle, keys, envelope=unsigned)
    other = generate_keys(tmp_path / "other")
    with pytest.raises(TaskBundleRefused, match="not signed by the pinned key"):
        _opened(_bundle(other, bundle.archive, module), keys)
    with pytest.raises(TaskBundleRefused, match="more than this node's limit of 100"):
        _opened(bundle, keys, max_bytes=100)


def _node(tmp_path: Path, keys: Any, policy: str | None) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = tmp_path / "site.npz"
    np.savez(data, x=(digits.data[:60] / 16.0).astype(np.float32), y=digits.target[:60])
    config: dict[str, Any] = {
        "name": "site-a",
        "data": str(data),
        "store": str(tmp_path / "store"),
        "pinned-key": str(keys.public),
        "model": "unit",
    }
    if policy is not None:
        (tmp_path / "policy.toml").write_text(policy)
        config["policy"] = str(tmp_path / "policy.toml")
    return config


def _train(
    plan: FederationPlan, bundle: TaskBundle, node: dict[str, Any], run_config: dict[str, str]
) -> Message:
    arrays = initial_arrays(plan.task(), 0)  # digits-mlp: what the bundled module re-exports
    plan = replace(plan, task_ref=bundle.task, task_bundle=bundle)
    cfg = instructions_for(plan).to_config()
    cfg["server-round"] = 1
    msg = instruction(RecordDict({"arrays": arrays, "config": cfg}), node_id=5)
    ctx = Context(
        run_id=1, node_id=5, node_config=node, state=RecordDict(),
        run_config=run_config,  # type: ignore[arg-type]
    )  # fmt: skip
    return refusing(msg, ctx, client.train)


@pytest.fixture
def plan(raw_config: dict[str, Any]) -> FederationPlan:
    return build_plan(raw_config, source="test")


def _pin(bundle: TaskBundle) -> str:
    return f'allowed_tasks = [{{ name = "{bundle.task}", sha256 = "{bundle.digest}" }}]\n'


@pytest.mark.parametrize("how", ["pinned", "trusted"])
def test_a_node_runs_a_bundle_its_policy_allows_from_its_store(
    plan: FederationPlan, tmp_path: Path, keys: Any, how: str
) -> None:
    module, source = _module(tmp_path)
    bundle = _bundle(keys, pack_source(source, module=module), module)
    policy = _pin(bundle) if how == "pinned" else "trust_release_key = true\n"
    reply = _train(plan, bundle, _node(tmp_path, keys, policy), bundle_run_config(bundle))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    src = tmp_path / "store" / "tasks" / bundle.digest / "src"
    assert sys.modules[module].__file__ == str(src / f"{module}.py")


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (None, "this node has no policy file"),
        ('allowed_tasks = ["digits-mlp"]\n', "which this node's policy does not allow"),
        ("PIN-OTHER", "which this node's policy does not allow"),
    ],
)
def test_a_bundle_the_policy_does_not_allow_is_refused_before_import(
    plan: FederationPlan, tmp_path: Path, keys: Any, policy: str | None, reason: str
) -> None:
    module, source = _module(tmp_path)
    bundle = _bundle(keys, pack_source(source, module=module), module)
    if policy == "PIN-OTHER":
        policy = _pin(replace(bundle, digest="0" * 64))
    reply = _train(plan, bundle, _node(tmp_path, keys, policy), bundle_run_config(bundle))
    assert reply.has_error()
    assert reply.error.reason.startswith(("TaskBundleRefused", "PolicyRefused"))
    assert reason in reply.error.reason
    assert f'sha256 = "{bundle.digest}"' in reply.error.reason or policy is None
    assert module not in sys.modules
    assert not (tmp_path / "store" / "tasks").exists()


def test_an_altered_bundle_in_the_run_config_is_refused_before_import(
    plan: FederationPlan, tmp_path: Path, keys: Any
) -> None:
    module, source = _module(tmp_path)
    bundle = _bundle(keys, pack_source(source, module=module), module)
    carried = bundle_run_config(bundle)
    archive = bytearray(bundle.archive)
    archive[len(archive) // 2] ^= 1
    carried["federator-task-bundle"] = base64.b64encode(bytes(archive)).decode()
    reply = _train(plan, bundle, _node(tmp_path, keys, _pin(bundle)), carried)
    assert reply.has_error()
    assert "task.zip does not match its signed sha256 digest" in reply.error.reason
    assert module not in sys.modules


def test_a_missing_package_is_named_and_nothing_is_imported(
    plan: FederationPlan, tmp_path: Path, keys: Any
) -> None:
    module, source = _module(tmp_path)
    bundle = _bundle(
        keys, pack_source(source, module=module), module, requires=("no-such-package>=1",)
    )
    reply = _train(plan, bundle, _node(tmp_path, keys, _pin(bundle)), bundle_run_config(bundle))
    assert reply.has_error()
    assert "needs packages this machine does not have: no-such-package (not installed)" in (
        reply.error.reason
    )
    assert module not in sys.modules


def test_a_module_that_fails_to_import_is_a_clear_refusal(
    plan: FederationPlan, tmp_path: Path, keys: Any
) -> None:
    module, source = _module(tmp_path, "import no_such_module_anywhere\n")
    bundle = _bundle(keys, pack_source(source, module=module), module)
    reply = _train(plan, bundle, _node(tmp_path, keys, _pin(bundle)), bundle_run_config(bundle))
    assert reply.has_error()
    assert reply.error.reason.startswith("TaskError")
    assert "No module named 'no_such_module_anywhere'" in reply.error.reason


def test_an_archive_reaching_outside_its_module_is_refused(
    plan: FederationPlan, tmp_path: Path, keys: Any
) -> None:
    module, _ = _module(tmp_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(f"{module}.py", "from federator.client.tasks import DIGITS_MLP as task\n")
        z.writestr("../evil.py", "raise SystemExit('imported')\n")
    bundle = _bundle(keys, buffer.getvalue(), module)
    reply = _train(plan, bundle, _node(tmp_path, keys, _pin(bundle)), bundle_run_config(bundle))
    assert reply.has_error()
    assert "'../evil.py', outside its module" in reply.error.reason
    assert not (tmp_path / "evil.py").exists()


def test_policy_entries_name_a_bundle_by_name_and_digest() -> None:
    policy = parse_policy(
        f'allowed_tasks = ["digits-mlp", {{ name = "t:task", sha256 = "{"a" * 64}" }}]',
        source="p",
    )
    assert policy.allowed_tasks == frozenset({"digits-mlp"})
    assert policy.bundle_problem("t:task", "a" * 64) is None
    assert policy.bundle_problem("t:task", "b" * 64) is not None
    with pytest.raises(ConfigError, match="allowed_tasks"):
        parse_policy('allowed_tasks = [{ name = "t:task", sha256 = "short" }]', source="p")


def test_packing_refuses_what_could_not_run(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    module, source = _module(tmp_path)
    sys.path.append(str(source.parent))
    raw = {**raw_config, "task": {"name": f"{module}:task"}}
    plan = build_plan(raw, source="t")
    with pytest.raises(ConfigError, match="set release.signing_key"):
        pack_task(plan, raw, config=tmp_path / "fed.toml")
    missing = {**raw, "task": {"name": f"{module}:task", "requires": ["no-such-package"]}}
    with pytest.raises(ConfigError, match="not installed here either: no-such-package"):
        pack_task(build_plan(missing, source="t"), missing, config=tmp_path / "fed.toml")
    assert pack_task(build_plan(raw_config, source="t"), raw_config, config=tmp_path) is None


# -- a release of a bundled task: the store checks, keeps and loads the bundle ----------------


def _bundled_release(keys: Any, tmp_path: Path, bundle: TaskBundle, version: int) -> Any:
    from federator.client.tasks import DIGITS_MLP
    from federator.client.weights import model_arrays, save_safetensors
    from federator.server.releases import ReleaseSigner

    folder = tmp_path / f"v{version}"
    folder.mkdir()
    save_safetensors(model_arrays(DIGITS_MLP.build_model()), folder / "weights.safetensors")
    (folder / "lineage.json").write_text("{}")
    return ReleaseSigner(load_private_key(keys.private)).sign(
        model="unit", version=version, previous_version=None, round=version, federation="unit",
        run_id="r", task=bundle.task, reasons=["ok"], metrics={}, folder=folder, bundle=bundle,
    )  # fmt: skip


def test_a_bundled_release_installs_only_as_the_policy_allows_and_predicts_from_the_store(
    tmp_path: Path, keys: Any
) -> None:
    from federator.client.store import ModelStore

    module, source = _module(tmp_path)
    bundle = _bundle(keys, pack_source(source, module=module), module)
    store = ModelStore.open(tmp_path / "store", pinned_key=keys.public, model="unit")
    release = _bundled_release(keys, tmp_path, bundle, 1)
    assert set(release.files) == {
        "weights.safetensors", "lineage.json", "task.zip", "task.envelope.json",
    }  # fmt: skip
    with pytest.raises(TaskBundleRefused, match="no policy file"):
        store.install(release.envelope, release.files)
    other = parse_policy(_pin(replace(bundle, digest="0" * 64)), source="p")
    with pytest.raises(TaskBundleRefused, match="does not allow"):
        store.install(release.envelope, release.files, policy=other)
    without = {k: v for k, v in release.files.items() if k != "task.zip"}
    with pytest.raises(Exception, match="missing"):
        store.install(release.envelope, without, policy=parse_policy(_pin(bundle), source="p"))
    assert store.current_version() is None
    assert module not in sys.modules
    assert (
        store.install(
            release.envelope, release.files, policy=parse_policy(_pin(bundle), source="p")
        )
        == 1
    )
    # `node predict`: the task comes from the bundle kept with the version, nowhere else.
    task = ModelStore.reopen(tmp_path / "store").task()
    assert task.name == "digits-mlp"
    assert sys.modules[module].__file__.startswith(
        str(tmp_path / "store" / "tasks" / bundle.digest)
    )


def test_a_bundle_over_the_nodes_limit_is_refused_before_import(
    plan: FederationPlan, tmp_path: Path, keys: Any
) -> None:
    module, source = _module(tmp_path)
    bundle = _bundle(keys, pack_source(source, module=module), module)
    policy = _pin(bundle) + "max_task_bundle_bytes = 100\n"
    reply = _train(plan, bundle, _node(tmp_path, keys, policy), bundle_run_config(bundle))
    assert reply.has_error()
    assert f"the task bundle is {len(bundle.archive):,} bytes, more than this node's limit" in (
        reply.error.reason
    )
    assert module not in sys.modules


def test_extraction_is_published_once_and_a_leftover_is_replaced(tmp_path: Path, keys: Any) -> None:
    from federator.client.bundle import extract_bundle

    module, source = _module(tmp_path)
    bundle = _bundle(keys, pack_source(source, module=module), module)
    root = tmp_path / "tasks"
    (root / bundle.digest / "src").mkdir(parents=True)  # an extraction that never finished
    (root / bundle.digest / "src" / "junk.py").write_text("x = 1\n")
    folder = extract_bundle(bundle, root)
    assert sorted(p.name for p in (folder / "src").iterdir()) == [f"{module}.py"]
    assert extract_bundle(bundle, root) == folder  # already there: used as it is
    assert [p.name for p in root.iterdir()] == [bundle.digest]  # no .incoming- left behind
