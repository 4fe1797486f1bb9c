"""The champion's client-side accuracy: how the version installed on a node does on the
node's own validation split *now*.

A model can decay without its inputs drifting (the labels' meaning moves, a new kind of case
appears), and only the partner's labelled data can tell. So when the coordinator asks a node
to evaluate a round's model, the node also evaluates the version it has installed — the
champion it serves — on the same validation split, and reports one number with its version
(`InstalledAccuracy`, in the serving report of that reply). The coordinator compares it with
the accuracy the same node reported for that version when it was trained
(`federator.server.tracking.serving_view.observe`); the ``[retrain]`` policy's
``accuracy_drop`` retrains when it has fallen on enough nodes.

It costs one evaluation per federation run: the first evaluate of a run measures the version
installed when the run reached this node, and ``<store>/serving/accuracy.json`` keeps the
result for the rest of that run. Versions installed later in the same run were trained in it,
on this data: their accuracy here is the one the node has just reported for their round, so
measuring them again would repeat that work every round. A version that no longer verifies
or loads, or that was trained for another input shape, is simply not reported: the reply
goes out as it would have.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from federator import FederatorError
from federator.client.serving.events import FOLDER
from federator.client.serving.report import InstalledAccuracy
from federator.client.store import ModelStore
from federator.client.tasks import Task
from federator.simulations.datasets import ArrayData

_CACHE = "accuracy.json"
_log = logging.getLogger(__name__)


class _Kept(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run: int
    measured: InstalledAccuracy


def installed_accuracy(
    store_root: Path, *, run: int, task: Task, val: ArrayData
) -> InstalledAccuracy | None:
    """The accuracy on ``val`` of the version installed when ``run`` first asked (kept for
    the rest of the run), or None if nothing usable is installed."""
    try:
        store = ModelStore.reopen(store_root)
        version = store.current_version()
    except FederatorError:
        return None
    if version is None or len(val) == 0:
        return None
    cache = store_root / FOLDER / _CACHE
    kept = _read(cache)
    if kept is not None and kept.run == run:
        return kept.measured
    try:
        stored_task = store.task(version)
        if tuple(stored_task.input_shape) != tuple(task.input_shape):
            return None
        result = stored_task.evaluate(store.load_model(stored_task, version=version), val)
    except (FederatorError, OSError, ValueError) as err:
        _log.warning("not reporting the accuracy of installed version %s: %s", version, err)
        return None
    measured = InstalledAccuracy(
        version=version, accuracy=result.accuracy, examples=result.num_examples
    )
    _write(cache, _Kept(run=run, measured=measured))
    return measured


def _read(path: Path) -> _Kept | None:
    try:
        return _Kept.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _write(path: Path, kept: _Kept) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(kept.model_dump_json())
    os.replace(tmp, path)


__all__ = ["installed_accuracy"]
