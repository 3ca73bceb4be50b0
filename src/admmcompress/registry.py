"""Name -> object tables, so a config can name a model, a dataset or a constraint kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A small registry whose lookup errors list every name that would have worked."""

    def __init__(self, what: str, error: type[Exception] = ValueError) -> None:
        self.what = what  # e.g. "model", used in messages
        self.error = error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name`` (names are unique)."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise self.error(
                f"unknown {self.what} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())
