"""One small registry mechanism for everything chosen by name (timm's `_registry.py` habit).

Perturbations, mask transforms and native corruptions each keep a `Registry`. A package's
`__init__` imports the modules that fill it, so importing the package is enough to see every
entry; tests parametrize over `registry.names()`, so a new entry is tested for free.

The errors are the same everywhere: an unknown name raises the registry's own error type (a
`ValueError`) naming the bad name and every valid one; registering a name twice raises
`DuplicateEntryError`, never silently replaces the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class DuplicateEntryError(ValueError):
    """Two entries were registered under one name (a programming error, raised at import)."""


class Registry(Generic[Entry]):
    """Entries by name. `kind` names them in errors ("perturbation", "mask transform", ...);
    `error` is the exception an unknown name raises (the caller's user-facing error type)."""

    def __init__(self, kind: str, error: type[ValueError] = ValueError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry) -> Entry:
        if name in self._entries:
            raise DuplicateEntryError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[Entry], Entry]:
        """A decorator: `@registry.register("name")` adds the decorated object."""

        def decorate(entry: Entry) -> Entry:
            return self.add(name, entry)

        return decorate

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def __getitem__(self, name: str) -> Entry:
        return self.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Entry]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
