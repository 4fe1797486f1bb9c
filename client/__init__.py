"""The partner side: the ClientApp, the instructions it accepts, weights handling, tasks.

The names below load on first use (PEP 562), so that importing one light module of this
package — the wire contract `federator.client.wire`, say, which the coordinator's strategies
need — does not import the whole ClientApp (and, through it, the strategies themselves).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from federator.client.app import build_client_app
    from federator.client.instructions import Instructions, read_instructions
    from federator.client.weights import load_arrays, model_arrays

_WHERE = {
    "build_client_app": "federator.client.app",
    "Instructions": "federator.client.instructions",
    "read_instructions": "federator.client.instructions",
    "load_arrays": "federator.client.weights",
    "model_arrays": "federator.client.weights",
}

__all__ = ["Instructions", "build_client_app", "load_arrays", "model_arrays", "read_instructions"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'federator.client' has no attribute {name!r}")
