"""An explicit name → object registry that refuses duplicates.

Every place where Federator offers alternatives (strategies, tasks, datasets, partitioners)
uses one of these, so a plug-in cannot silently replace a built-in by reusing its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from federator import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names mapped to entries; names are case-insensitive and registered once."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._entries: dict[str, T] = {}

    @property
    def kind(self) -> str:
        """What this registry holds, e.g. ``"strategy"``; used in error messages."""
        return self._kind

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; raise `RegistryError` if the name is taken."""
        key = name.strip().lower()
        if not key:
            raise RegistryError(f"a {self._kind} needs a non-empty name")
        if key in self._entries:
            raise RegistryError(f"{self._kind} {key!r} is already registered")
        self._entries[key] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry for ``name``; `RegistryError` listing the known names otherwise."""
        key = name.strip().lower()
        try:
            return self._entries[key]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise RegistryError(f"unknown {self._kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
