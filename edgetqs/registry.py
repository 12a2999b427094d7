"""Named plug-ins: runtimes, probes, allocation methods and device kinds each register here.

A registry maps a name to an implementation, refuses a duplicate name, and answers an unknown name
with the list of known ones, so the CLI can offer exactly the registered names and nothing else has
to switch on strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import BadInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation, in registration order.

    Args:
        kind: what is registered (``runtime``, ``probe``...), for messages.
        loader: imported on first use, so that registering modules load lazily (``import edgetqs`` stays light).
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name``.

        Raises:
            ValueError: ``name`` is taken (two plug-ins must never silently replace each other).
        """
        if name in self._items:
            raise ValueError(f"a {self.kind} named '{name}' is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The implementation registered as ``name``.

        Raises:
            BadInputError: no such name; the message lists the known ones.
        """
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise BadInputError(f"unknown {self.kind} '{name}'; expected one of {', '.join(self._items)}") from None

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter(list(self._items.values()))

    def help(self) -> str:
        """``a | b | c``: for option help texts."""
        return " | ".join(self.names())
