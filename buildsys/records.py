"""Frozen records whose methods are compiled with their module, not generated at import.

`@dataclass` writes each class's `__init__`, `__repr__`, `__eq__`, `__hash__` and frozen
`__setattr__`/`__delattr__` as source and compiles each with its own `exec` when the module is
imported: ~1 ms per class, paid by every `buildsys` process for every class on its path (the
project model alone is 8 classes). A `Record` subclass names its fields, in its `__init__`'s
positional order, in `__match_args__`, which is also its `__slots__` (`__slots__ = __match_args__
= (…)`; the fields annotated as a dataclass's are), and writes its `__init__`, setting each field
with `object.__setattr__` as a frozen dataclass's does. The other methods are this class's, shared,
and behave as a frozen dataclass's (`eq=True`): equal when of the same class with equal fields,
hashed on the fields, shown as `Name(field=value, …)`, `FrozenInstanceError` on assignment, pickled
and copied as a call of the class with the field values. Type checkers see a frozen dataclass
(`dataclass_transform`); `dataclasses.fields` and `dataclasses.replace` do not apply to it.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from operator import attrgetter
from typing import Any, ClassVar, dataclass_transform

__all__ = ["NEW_DICT", "FrozenInstanceError", "Record"]

# The default of a record's dict field: its `__init__` gives each record a new empty dict when it
# gets this one (`{} if x is NEW_DICT else x`), so this one is never stored, shared or changed.
NEW_DICT: dict[str, Any] = {}


@dataclass_transform(eq_default=True, frozen_default=True)
class Record:
    __slots__ = ()
    __match_args__: ClassVar[tuple[str, ...]] = ()
    _values: ClassVar[Any]  # the fields as a tuple, read in C

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        names = cls.__dict__.get("__match_args__", ())
        if len(names) < 2 or cls.__dict__.get("__slots__") != names:
            raise TypeError(f"{cls.__name__}: a Record names its fields (two or more) in __match_args__ = __slots__")
        cls._values = attrgetter(*names)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(self.__match_args__, self._values(self), strict=True))
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(self._values(self) == other._values(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values(self))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[Record], tuple[Any, ...]]:
        return type(self), self._values(self)
