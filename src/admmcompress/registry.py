"""Name -> object tables, so a config can name a model, a dataset, a constraint kind or a
file format, and so that adding one is one new module.

A registry may be given a package to discover: before its first lookup it imports every
module of that package, and each module registers what it defines. Nothing else has to
import a new module, and a command that never looks a name up never pays for importing it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A small registry whose lookup errors list every name that would have worked."""

    def __init__(
        self, what: str, error: type[Exception] = ValueError, discover: str | None = None
    ) -> None:
        self.what = what  # e.g. "model", used in messages
        self.error = error
        self._items: dict[str, T] = {}
        self._discover = discover  # a package whose modules register into this registry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name`` (names are unique)."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def _load(self) -> None:
        package, self._discover = self._discover, None
        if package is None:
            return
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise self.error(
                f"unknown {self.what} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(list(self._items.items()))
