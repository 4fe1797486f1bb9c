"""Partner-side commands: ``federator keys …`` and ``federator node …``.

federator keys generate --out DIR            an Ed25519 release key pair
federator node models --store DIR            installed versions (verified)
federator node rollback --store DIR [--to V] switch `current` back
federator node predict --store DIR --input F predictions of the installed model
federator node start --kit DIR --data PATH   run this partner's node (client/cli_node_start.py)
federator node serve --store DIR             serve the installed model over HTTP (client/serving/)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import numpy as np
import numpy.typing as npt
import typer
from rich.console import Console
from rich.table import Table

from federator import DataError, ReleaseRefused
from federator.client.cli_node_start import node_start
from federator.client.keys import generate_keys
from federator.client.serving.command import node_serve
from federator.client.store import ENVELOPE, ModelStore

keys_app = typer.Typer(no_args_is_help=True, help="Release signing keys.")
node_app = typer.Typer(
    no_args_is_help=True, help="A partner node: run it, and its installed models."
)
out = Console()

StoreOpt = Annotated[Path, typer.Option("--store", help="The node's model store folder.")]


@keys_app.command("generate")
def keys_generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for release.key/.pub.")],
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            "--passphrase-env",
            help="Encrypt the private key with the passphrase in this environment variable.",
        ),
    ] = None,
) -> None:
    """Create the federation's Ed25519 release key pair (private key 0600)."""
    from federator.client.actions import run_action

    def go() -> None:
        passphrase = None
        if passphrase_env is not None:
            value = os.environ.get(passphrase_env)
            if not value:
                raise DataError(f"--passphrase-env: {passphrase_env} is not set")
            passphrase = value.encode()
        paths = generate_keys(out_dir, passphrase=passphrase)
        out.print(f"private key: {paths.private} (keep it secret; mode 600)")
        out.print(f"public key:  {paths.public} (give it to every partner to pin)")
        out.print(f"key id:      {paths.key_id}")

    run_action(go)


@node_app.command("models")
def node_models(store: StoreOpt) -> None:
    """List the versions kept in the store, each re-verified against its signature."""
    from federator.client.actions import run_action

    def go() -> None:
        s = ModelStore.reopen(store)
        table = Table(title=f"{s.model} @ {store}", title_justify="left")
        for col in ("version", "round", "federation", "released", "expires", "current"):
            table.add_column(col)
        for v in s.versions():
            expires = v.expires_at or "never"
            table.add_row(
                str(v.version),
                str(v.round),
                v.federation,
                v.created_at,
                f"[red]{expires} (expired)[/]" if v.expired() else expires,
                "●" if v.current else "",
            )
        out.print(table)
        if any(v.current and v.expired() for v in s.versions()):
            out.print("[red]the current model's release has expired[/]: no newer one arrived")

    run_action(go)


@node_app.command("init")
def node_init(
    store: StoreOpt,
    pinned_key: Annotated[
        Path,
        typer.Option("--pinned-key", help="The federation's release.pub, received out of band."),
    ],
    model: Annotated[str, typer.Option("--model", help="The registered model this node accepts.")],
    keep: Annotated[int, typer.Option("--keep", help="Versions to keep.")] = 3,
    high_water: Annotated[
        int | None,
        typer.Option(
            "--high-water",
            help="After a lost state.json: the highest version this node ever installed.",
        ),
    ] = None,
) -> None:
    """Create a model store that accepts releases of MODEL signed with the pinned key (or,
    with --high-water, restore a store's replay protection after its state.json was lost)."""
    from federator.client.actions import run_action

    def go() -> None:
        s = ModelStore.open(store, pinned_key=pinned_key, model=model, keep=keep)
        if high_water is not None:
            s.repair_high_water(high_water)
            out.print(f"replay protection: no version up to {high_water} is installed again")
        out.print(f"model store for {s.model!r} at {store} (keeps {s.keep} versions)")

    run_action(go)


@node_app.command("install")
def node_install(
    store: StoreOpt,
    release: Annotated[
        Path, typer.Option("--release", help="Folder with envelope.json and the released files.")
    ],
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="This node's policy file: needed for a release of a bundled task."
        ),
    ] = None,
) -> None:
    """Verify and install a release by hand (e.g. one exported with `federator models
    export`); a refusal says why and leaves the installed model as it was. A release of a
    task of the coordinator's own carries its task bundle, which the policy must allow."""
    from federator.client.actions import run_action
    from federator.client.node_policy import load_policy

    def go() -> None:
        s = ModelStore.reopen(store)
        rules = load_policy(policy) if policy is not None else None
        envelope_path = release / ENVELOPE
        if not envelope_path.is_file():
            raise ReleaseRefused(f"{release} holds no {ENVELOPE} (unsigned)")
        files = {
            p.name: p.read_bytes() for p in release.iterdir() if p.is_file() and p.name != ENVELOPE
        }
        version = s.install(envelope_path.read_text(), files, policy=rules)
        out.print(f"{s.model}: installed version {version}")

    run_action(go)


@node_app.command("rollback")
def node_rollback(
    store: StoreOpt,
    to: Annotated[
        int | None, typer.Option("--to", help="Version to use (default: the newest older one).")
    ] = None,
) -> None:
    """Point `current` at an older kept version (verified first)."""
    from federator.client.actions import run_action

    def go() -> None:
        s = ModelStore.reopen(store)
        before = s.current_version()
        after = s.rollback(to)
        out.print(f"{s.model}: current version {before} → {after}")

    run_action(go)


def _read_input(path: Path) -> npt.NDArray[np.float32]:
    if path.suffix == ".npy":
        try:
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a numeric .npy file ({err})") from None
    try:
        return np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a numeric CSV file ({err})") from None


@node_app.command("predict")
def node_predict(
    store: StoreOpt,
    input_file: Annotated[Path, typer.Option("--input", help=".npy array or CSV rows of features")],
) -> None:
    """Predict with the installed (current) model; prints `row,prediction` lines."""
    import torch

    from federator.client.actions import run_action

    def go() -> None:
        s = ModelStore.reopen(store)
        task = s.task()
        if any(v.current and v.expired() for v in s.versions()):
            Console(stderr=True).print(
                "[red]warning[/]: the installed model's release has expired (no newer release "
                "arrived); its predictions may be stale"
            )
        x = _read_input(input_file)
        shape = tuple(task.input_shape)
        if x.ndim == 1 or tuple(x.shape[1:]) != shape:
            try:
                x = x.reshape((-1, *shape))
            except ValueError:
                raise DataError(
                    f"{input_file}: rows of shape {x.shape[1:]} do not fit the "
                    f"model's input {shape}"
                ) from None
        with torch.no_grad():
            predictions = s.load_model(task)(torch.from_numpy(x)).argmax(1).tolist()
        out.print("row,prediction")
        for i, p in enumerate(predictions):
            out.print(f"{i},{p}", highlight=False)

    run_action(go)


node_app.command("start")(node_start)
node_app.command("serve")(node_serve)
