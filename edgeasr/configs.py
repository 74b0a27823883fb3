"""Dataclass configs to and from plain dicts (JSON), so run directories and models describe themselves."""
import dataclasses
from typing import Any, Type, TypeVar

from edgeasr.errors import EdgeasrError

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls: Type[T], values: dict) -> T:
    """Build `cls` from a dict, refusing keys it does not know (a typo must not pass silently)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise EdgeasrError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(fields)}")
    return cls(**{name: _restore(fields[name].type, value) for name, value in values.items()})


def _restore(field_type: Any, value: Any) -> Any:
    """Undo what JSON flattened: nested config sections and tuples (JSON has only lists)."""
    if dataclasses.is_dataclass(field_type) and isinstance(value, dict):
        return from_dict(field_type, value)
    if isinstance(value, list) and "tuple" in str(field_type).lower():
        return tuple(value)
    return value
