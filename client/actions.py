"""Running a command-line action: Federator's errors become a message and an exit code.

Shared by the node's commands (`federator node …`, `federator keys …`) and the coordinator's;
it lives on the node's side so that a node never imports the coordinator to report an error.
Exit codes: 2 for a bad config or kit (`ConfigError`), 130 after Ctrl-C, 1 for any other
`FederatorError`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.text import Text

from federator import ConfigError, FederationInterrupted, FederatorError

err_console = Console(stderr=True)

T = TypeVar("T")


def run_action(action: Callable[[], T]) -> T:
    """Run ``action``; turn Federator's errors into a message and an exit code."""
    try:
        return action()
    except ConfigError as err:
        _error(str(err))
        raise typer.Exit(2) from None
    except FederationInterrupted as err:
        _error(f"{type(err).__name__}: {err}", *getattr(err, "__notes__", []))
        # Flower's engine threads may still wait on Ray workers that Ctrl-C already stopped;
        # everything of ours is recorded, so leave now instead of hanging at interpreter exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except FederatorError as err:
        _error(f"{type(err).__name__}: {err}", *getattr(err, "__notes__", []))
        raise typer.Exit(1) from None


def _error(message: str, *notes: str) -> None:
    # Plain text, never wrapped: messages hold paths and key names a person may copy.
    err_console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    for note in notes:
        err_console.print(Text(f"  {note}"), soft_wrap=True)
