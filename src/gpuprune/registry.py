"""A tiny name -> object registry shared by targets, methods, importances, backends and models.

Users add their own entries with the decorator (or :meth:`Registry.add`); lookups of unknown names
raise a :class:`~gpuprune.errors.UserError` listing the valid names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gpuprune.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping from a user-facing name to an object (class, factory or value)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "target", "method", ...: used in error messages
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True)")
        self._items[name] = item
        return item

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(item: T) -> T:
            return self.add(name, item, replace=replace)

        return deco

    def find(self, name: str) -> T | None:
        """The entry named ``name``, matched case-insensitively when no exact name matches."""
        if name in self._items:
            return self._items[name]
        folded = [k for k in self._items if k.casefold() == name.casefold()]
        return self._items[folded[0]] if len(folded) == 1 else None

    def get(self, name: str) -> T:
        """The entry named ``name`` (case-insensitive), or a one-line UserError listing names."""
        if not isinstance(name, str):
            raise UserError(
                f"a {self.kind} name must be a string, got {type(name).__name__} {name!r}"[:160],
                f"choose one of: {', '.join(self._items)}",
            )
        item = self.find(name)
        if item is None:
            raise UserError(
                f"unknown {self.kind} {name!r}", f"choose one of: {', '.join(self._items)}"
            )
        return item

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
