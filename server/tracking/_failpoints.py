"""Named crash points, for the tests that kill a federation in the middle of a write.

With ``FEDERATOR_FAILPOINT=<name>:<round>`` set, the thread that reaches that point for that
round writes the file named by ``FEDERATOR_FAILPOINT_MARKER`` and holds still (up to
``HOLD`` seconds), so a test can SIGKILL the process group at exactly that moment. Without
the variable, `reached` costs one dictionary lookup. Points: ``checkpoint-uploaded`` (the
round's checkpoint files are in MLflow, its commit tag is not) and ``version-registered``
(the round's model version exists, its checkpoint does not).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

ENV = "FEDERATOR_FAILPOINT"
MARKER_ENV = "FEDERATOR_FAILPOINT_MARKER"
HOLD = 600.0


def reached(name: str, round_: int) -> None:
    """Hold here if the environment names this point and round (see the module doc)."""
    spec = os.environ.get(ENV)
    if not spec or spec != f"{name}:{round_}":
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{name}:{round_}\n")
    threading.Event().wait(HOLD)
