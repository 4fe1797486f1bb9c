"""Deployment commands of ``federator`` (kept apart from ``server/cli/__init__.py``).

    federator provision FILE [--out DIR]   per-party kits: CA, coordinator, one per node

`register` adds the commands to the ``federator`` app. Errors go through
`federator.client.actions.run_action` like every other command (exit 2 for a bad file or kit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from federator.client.kit import KitKind

out = Console()

_RECIPIENT = {
    KitKind.CA: "keep offline (not needed to run anything)",
    KitKind.COORDINATOR: "the coordinator's operator",
    KitKind.NODE: "this node's operator",
}


def provision_command(
    file: Annotated[Path, typer.Argument(help="The federation file (TOML): name, address, nodes.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the kits (must not exist or be empty).")
    ] = Path("kits"),
) -> None:
    """Create per-party deployment kits: a CA, the coordinator's TLS certificate and release
    key, and one node-authentication key per node. Private keys are written 0600."""
    from federator.client.actions import run_action
    from federator.server.deploy.provision import provision, read_federation_file

    def go() -> None:
        report = provision(read_federation_file(file), out=out_dir)
        table = Table(
            title=f"Kits for federation {report.federation!r} in {report.out}",
            title_justify="left",
        )
        for col in ("party", "folder", "files", "give to"):
            table.add_column(col, overflow="fold")
        for kit in report.kits:
            table.add_row(
                kit.party,
                str(kit.folder.relative_to(report.out)),
                "\n".join(kit.files),
                _RECIPIENT[kit.kind],
            )
        out.print(table)
        out.print(f"CA fingerprint:  {report.ca_fingerprint}", highlight=False, soft_wrap=True)
        out.print(f"release key id:  {report.release_key_id}", highlight=False)
        out.print(f"certificates expire {report.not_after:%Y-%m-%d %H:%M} UTC", highlight=False)
        out.print(
            "Next: send each folder to its party over a secure channel (never by plain e-mail); "
            "read the CA fingerprint to each partner out of band so they can compare it with "
            "their kit.json. Keep ca/ offline. Delete the copies you sent.",
            highlight=False,
            soft_wrap=True,
        )

    run_action(go)


def register(app: typer.Typer) -> None:
    """Add the deployment commands to the ``federator`` app."""
    app.command("provision")(provision_command)
