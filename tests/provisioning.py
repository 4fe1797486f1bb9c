"""Shared helpers for the provisioning tests: one federation file, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from federator.server.deploy.provision import (
    FederationSpec,
    ProvisionReport,
    parse_federation,
    provision,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0
NODES = ("hospital-a", "hospital-b", "clinic-3")


def clock_at(when: datetime) -> float:
    return when.timestamp()


def later(days: float) -> float:
    """The clock ``days`` after provisioning."""
    return clock_at(T0) + days * DAY


def spec(
    *, name: str = "acme-study", coordinator: str = "coord.example.org:9092", days: int = 30
) -> FederationSpec:
    raw = {
        "federation": {
            "name": name,
            "coordinator": coordinator,
            "extra_sans": ["10.0.0.5", "coord.internal"],
            "cert_days": days,
        },
        "nodes": [{"name": n} for n in NODES],
    }
    return parse_federation(raw, source="fed.toml")


def make_kits(out: Path) -> ProvisionReport:
    """Kits for `spec()` provisioned at T0 (certificates valid for 30 days)."""
    return provision(spec(), out=out, clock=lambda: clock_at(T0))


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
