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

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}", f"choose one of: {', '.join(self._items)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
