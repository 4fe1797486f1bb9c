"""End to end: a partner presenting another partner's name takes no part.

The attack from issue 16, as a hostile partner would run it: three provisioned kits, and
site-b's operator edits its ``kit.json`` to say ``site-a`` before ``federator node start``.
Flower admits the node (its key is registered); Federator's hello challenge shows that the
node holds site-b's key, not site-a's, so it is refused: it never trains, never gets a
release, the run says why, and the registry lists exactly the two honest partners.
Real SuperLink with TLS and node authentication, real SuperNodes, `federator run`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest
from deployed import cli_output, deployment, eval_list, start_node, wait_for
from procs import free_port, run_cli

pytestmark = pytest.mark.integration
__all__ = ["deployment"]  # the fixture, imported for pytest

FEDERATION, SEED = "e2e-deploy", 5


def _pseudonym(label: str) -> str:
    """What the coordinator writes to MLflow for ``label`` (computed here independently)."""
    salt = f"{FEDERATION}:{SEED}".encode()
    return hmac.new(salt, label.encode(), hashlib.sha256).hexdigest()[:10]


def _claim(kit: Path, name: str) -> None:
    """Edit a node kit's ``kit.json`` to claim ``name`` (the hostile operator's move)."""
    manifest = json.loads((kit / "kit.json").read_text())
    manifest["node"] = name
    (kit / "kit.json").write_text(json.dumps(manifest))


def test_a_node_presenting_another_nodes_name_is_refused(deployment: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    d = deployment
    kits = d["kits"] / "nodes"
    _claim(kits / "site-b", "site-a")
    honest = {n: start_node(d, n, port=free_port()) for n in ("site-a", "site-c")}
    impostor = start_node(d, "site-b", port=free_port())
    for proc in [*honest.values(), impostor]:
        wait_for(proc, "connected:", timeout=90)  # Flower admits it: its key is registered
    assert "Node 'site-a'" in cli_output(impostor)

    coordinator_kit = d["kits"] / "coordinator"
    cfg = d["tmp"] / "fed.toml"
    cfg.write_text(
        f"""
[federation]
name = "{FEDERATION}"
rounds = 2
seed = {SEED}
[task]
name = "digits-mlp"
[data]
clients = 2
[strategy]
min_available_nodes = 2
[training]
epochs = 2
lr = 0.1
momentum = 0.9
[gate]
threshold = 0.3
[tracking]
runs_dir = "{d["tmp"] / "runs"}"
[release]
signing_key = "{coordinator_kit / "release.key"}"
"""
    )
    result = run_cli(
        "run", str(cfg), "--coordinator", f"127.0.0.1:{d['port']}", "--kit", str(coordinator_kit),
        cwd=d["tmp"], env=d["env"], timeout=900,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert f"Federation '{FEDERATION}' finished" in result.stdout, out[-6000:]
    # The coordinator's log names the claim and the key actually held.
    assert "claims to be 'site-a'; holds the node key of 'site-b'" in out, out[-6000:]

    uri = f"sqlite:///{d['tmp'] / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = '{FEDERATION}'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 2]
    honest_pseudonyms = sorted(_pseudonym(n) for n in ("site-a", "site-c"))
    for v in versions:
        assert sorted(eval_list(v.tags["federator.participants"])) == honest_pseudonyms
    # MLflow records the refusal under a pseudonym that is not site-a's.
    run = client.get_run(versions[0].run_id)
    records = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "federation/rounds.json", str(d["tmp"]))
        ).read_text()
    )["rounds"]
    [refusal] = [r for rec in records for r in rec["refusals"] if r["phase"] == "identity"]
    assert refusal["client"] not in honest_pseudonyms
    assert "site-a" not in refusal["reason"]
    assert _pseudonym("site-b") in refusal["reason"]

    # The impostor never trained and was sent no release; the honest nodes installed one.
    log = (kits / "site-b" / "state" / "supernode.log").read_text(errors="replace")
    assert "train message" not in log
    assert not (kits / "site-b" / "state" / "models" / "current").is_symlink()
    champion = client.get_registered_model(FEDERATION).aliases["champion"]
    for name in honest:
        current = kits / name / "state" / "models" / "current"
        assert Path(os.readlink(current)).name == str(champion)
