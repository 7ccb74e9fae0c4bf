"""One small generic registry with stable string keys (the timm pattern).

Adapters, objectives, structured layers and encoders each get an instance. The catalog
stores ``(key, config_json)``, never a class path, so renaming a class breaks nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kernels.errors import ConflictError, NotFoundError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from stable keys to plug-ins of one kind (e.g. ``"adapter"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator: ``@ADAPTERS.register("orthogonal")``. A duplicate key is an error."""

        def add(entry: T) -> T:
            if key in self._entries:
                raise ConflictError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = entry
            return entry

        return add

    def get(self, key: str) -> T:
        try:
            return self._entries[key]
        except KeyError:
            raise NotFoundError(
                f"unknown {self.kind} {key!r}", fix=did_you_mean(key, self.keys())
            ) from None

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._entries)
