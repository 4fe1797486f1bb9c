"""The run config of Federator's Flower App: what `federator run` writes and the ServerApp reads.

Flower's run config is ``key='value'`` text pairs, so the resolved federation config travels
as base64 JSON under `SUBMITTED_KEY`, the MLflow run to continue under `RESUME_KEY`, and
``true`` under `STOCK_FLOWER_KEY` for a run on stock Flower (``federator run --stock-flower``),
and the coordinator kit's ``nodes/`` folder under `NODE_KEYS_KEY`: its ``<name>.pub`` keys are
what each node must prove it holds (`federator.client.identity`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

SUBMITTED_KEY = "federation-config-json"
RESUME_KEY = "federation-resume"
STOCK_FLOWER_KEY = "federator-stock-flower"
NODE_KEYS_KEY = "federator-node-keys"


def encode_config(raw: dict[str, Any]) -> str:
    """Run-config-safe text (Flower's run config is ``key='value'`` pairs)."""
    return base64.urlsafe_b64encode(json.dumps(raw, sort_keys=True).encode()).decode()


def decode_config(text: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text.encode()))
    return decoded
