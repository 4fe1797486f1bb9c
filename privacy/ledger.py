"""The privacy ledger a node keeps on its own disk.

Every round of local DP-SGD a node trains is written here *before* training starts
(write-ahead: a crash mid-round can only over-count, never forget a spend). The ledger is
keyed by a fingerprint of the training data, so it spans federations and restarts: the
same records trained on in two federations compose into one ε.

The file is JSON, replaced atomically (write, fsync, rename) under an exclusive lock, so two
processes on one node cannot lose each other's entries. An unreadable ledger is an error —
Federator never starts a fresh one over it, which would silently reset the budget.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from federator import DataError
from federator.privacy.accounting import Accountant, Charge, epsilon

FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One round of DP-SGD on one dataset."""

    dataset: str
    federation: str
    run: str
    round: int
    charge: Charge
    recorded: float

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "federation": self.federation,
            "run": self.run,
            "round": self.round,
            "noise_multiplier": self.charge.noise_multiplier,
            "sample_rate": self.charge.sample_rate,
            "steps": self.charge.steps,
            "recorded": self.recorded,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LedgerEntry:
        return cls(
            dataset=str(raw["dataset"]),
            federation=str(raw["federation"]),
            run=str(raw["run"]),
            round=int(raw["round"]),
            charge=Charge(
                noise_multiplier=float(raw["noise_multiplier"]),
                sample_rate=float(raw["sample_rate"]),
                steps=int(raw["steps"]),
            ),
            recorded=float(raw["recorded"]),
        )


def dataset_fingerprint(*arrays: np.ndarray) -> str:
    """A stable id for a dataset: sha256 over its arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        c = np.ascontiguousarray(a)
        h.update(f"{c.dtype.str}{c.shape}".encode())
        h.update(c.tobytes())
    return h.hexdigest()[:32]


class PrivacyLedger:
    """Cumulative DP-SGD spend per dataset, persisted at ``path``."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock

    # -- reading ---------------------------------------------------------------------------

    def entries(self) -> list[LedgerEntry]:
        """Every recorded entry, oldest first (none if the ledger does not exist yet)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as err:
            raise DataError(f"privacy ledger {self.path}: cannot read ({err.strerror})") from None
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ValueError(f"unknown format {raw.get('format')!r}")
            return [LedgerEntry.from_json(e) for e in raw["entries"]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(
                f"privacy ledger {self.path} is unreadable ({err}); refusing to train "
                "until it is restored — starting a new one would reset the budget"
            ) from None

    def history(self, dataset: str, *, run: str | None = None) -> list[Charge]:
        """The charges on ``dataset`` (only those of ``run``, when given)."""
        return [
            e.charge
            for e in self.entries()
            if e.dataset == dataset and (run is None or e.run == run)
        ]

    def spent(
        self, dataset: str, *, delta: float, accountant: Accountant, run: str | None = None
    ) -> float:
        """ε spent on ``dataset`` so far (in ``run`` only, when given)."""
        return epsilon(self.history(dataset, run=run), delta=delta, accountant=accountant)

    def state_dict(self) -> dict[str, Any]:
        """The ledger's content, as stored."""
        return {"format": FORMAT, "entries": [e.to_json() for e in self.entries()]}

    # -- writing ---------------------------------------------------------------------------

    def record(
        self, *, dataset: str, federation: str, run: str, round: int, charge: Charge
    ) -> LedgerEntry:
        """Append one entry (atomically; the ledger file is created when missing)."""
        entry = LedgerEntry(
            dataset=dataset,
            federation=federation,
            run=run,
            round=round,
            charge=charge,
            recorded=self._clock(),
        )
        with self._locked():
            entries = self.entries()
            entries.append(entry)
            self._write({"format": FORMAT, "entries": [e.to_json() for e in entries]})
        return entry

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the ledger's content (restoring a backup)."""
        entries = [LedgerEntry.from_json(e) for e in state["entries"]]
        with self._locked():
            self._write({"format": FORMAT, "entries": [e.to_json() for e in entries]})

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, doc: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


__all__ = ["FORMAT", "LedgerEntry", "PrivacyLedger", "dataset_fingerprint"]
