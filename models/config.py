"""Frozen keyword-only dataclass configs that round-trip through JSON and reject unknown keys."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Self

from kernels.errors import InvalidInputError, did_you_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base for every config: subclasses add fields and validate in ``__post_init__``."""

    # fields added after artifacts were first saved, each with the value that describes an artifact
    # written without it (where that differs from the default a new config gets); see from_saved
    SAVED_BEFORE: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise InvalidInputError(
                    f"{cls.__name__} has no field {key!r}", fix=did_you_mean(key, known)
                )
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> Self:
        """A config read back from an artifact: a field the writer did not know yet takes the value
        that describes how that artifact was made (``SAVED_BEFORE``), not today's default."""
        return cls.from_dict({**cls.SAVED_BEFORE, **data})

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def check(condition: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise a clear :class:`InvalidInputError`."""
    if not condition:
        raise InvalidInputError(message)
