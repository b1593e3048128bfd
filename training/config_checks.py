"""Declared checks for configuration fields, enforced when a configuration section is built.

Each field of a configuration section says what it accepts where it is declared::

    @dataclass
    class EarlyStoppingConfig(Section):
        SECTION: ClassVar[str] = "training.early_stopping"
        patience: int = setting(8, low=0)
        monitor: str = setting("val_loss", choices=("val_loss", "val_auc"))

Building the section checks every field's type (from its annotation) and its declared
constraint, then runs the section's own cross-field :meth:`Section.check`.  A failure is one
:class:`ConfigError` that names the full key (``training.early_stopping.patience``) and what is
allowed, so a bad value never survives until the middle of a build or a split.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from histoedge.training.errors import ConfigError

_NO_DEFAULT = dataclasses.MISSING


@dataclass(frozen=True)
class Constraint:
    """What a value (or each item of a list value) may be.

    Args:
        choices: the allowed values, or None for any.
        low, high: bounds, or None for unbounded.
        low_open, high_open: whether a bound itself is excluded.
    """

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: Any) -> bool:
        if self.choices is not None and value not in self.choices:
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.choices is not None:
            names = ["null" if c is None else str(c) for c in self.choices]
            return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        if low and high:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return low or high or "any value"


def setting(default: Any = _NO_DEFAULT, *, factory: Any = _NO_DEFAULT, choices=None, low=None, high=None,
            low_open: bool = False, high_open: bool = False, each: bool = False) -> Any:
    """A configuration field with its constraint.

    Args:
        default: the default value (or ``factory`` for a mutable default).
        choices, low, high, low_open, high_open: see :class:`Constraint`.
        each: the constraint applies to each item of a list value rather than to the value.
    """
    constraint = Constraint(tuple(choices) if choices is not None else None, low, high, low_open, high_open)
    metadata = {"constraint": constraint, "each": each}
    if factory is not _NO_DEFAULT:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _type_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             dict: "a mapping", list: "a list"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _matches(value: Any, kind: Any) -> bool:
    """Whether ``value`` has the annotated type (int for float is fine; bool for int is not)."""
    if kind is Any:
        return True
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(kind) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(kind) or not isinstance(kind, type):
        return True  # nested sections are checked when they are built
    return isinstance(value, kind)


def _describe_type(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = len(arms) < len(typing.get_args(kind))
        text = " or ".join(_describe_type(a) for a in arms)
        return f"{text} or null" if optional else text
    if origin is list:
        (item,) = typing.get_args(kind) or (Any,)
        return f"a list of {_describe_type(item).removeprefix('an ').removeprefix('a ')}s"
    return _type_name(origin or kind)


class Section:
    """Base of configuration sections: checks every field when the section is built.

    ``SECTION`` is the section's key path, used in error messages.  Subclasses put checks that
    involve several fields in :meth:`check`.
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            key = self.key(f.name)
            if not _matches(value, hints[f.name]):
                raise ConfigError(f"{key} must be {_describe_type(hints[f.name])}, got {value!r}")
            constraint: Constraint | None = f.metadata.get("constraint")
            if constraint is None or value is None:
                continue
            items = value if f.metadata.get("each") else [value]
            for item in items:
                if not constraint.allows(item):
                    what = "each item of " + key if f.metadata.get("each") else key
                    raise ConfigError(f"{what} must be {constraint.describe()}, got {item!r}")
        self.check()

    def key(self, name: str) -> str:
        """The full key of field ``name``, e.g. ``training.early_stopping.patience``."""
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def check(self) -> None:
        """Cross-field checks; raise :class:`ConfigError` naming the keys."""

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)
