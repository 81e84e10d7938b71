"""Training options: how a field of a stage's dataclass is declared, described and checked.

Every option of `mixit pretrain`, `finetune` and `freeze-finetune` is one field of the stage's
dataclass (:mod:`mixitcli.train.config`), declared with :func:`option`::

    lr: float = option(1e-3, "Peak learning rate.", group=OPTIMIZER, above=0)

From that one line come the command-line flag (``--lr``: the field name with dashes), its help
text and panel in ``--help``, the type check of recipe and command-line values (from the
annotation), the range check, and whether a resumed run may change it (``resume=True``).
A stage subclass changes a default by restating the field with a plain value
(``batch_size: int = 32``); the declaration of the base class still describes it.

Types understood: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` (a closed set of
names), ``tuple[float, float]``, ``tuple[str, ...]`` (a list of names, e.g. the stems), and any
of them ``| None``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

# Panels of `--help`, in this order.
DATA = "Data and model"
OBJECTIVE = "Objective"
BATCHES = "Batches and length"
OPTIMIZER = "Optimizer and schedule"
VALIDATION = "Validation and checkpoints"
RUNTIME = "Runtime"

_META = "mixit_option"


def option(
    default: Any,
    help: str,
    *,
    group: str,
    resume: bool = False,
    required: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    aliases: tuple[str, ...] = (),
    stages: tuple[str, ...] | None = None,
    cli: bool = True,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a training option.

    Args:
        default: the value when neither the recipe nor the command line sets it.
        help: one or two sentences for ``--help`` (the stage's default is appended).
        group: the ``--help`` panel (DATA, OBJECTIVE, BATCHES, OPTIMIZER, VALIDATION, RUNTIME).
        resume: a resumed run may change it (paths, length, devices, logging); the other
            options define the run and must stay as they were.
        required: a new run needs a non-empty value.
        at_least, above, at_most, below: bounds of a number.
        aliases: older or shorter flags that mean the same (``--valid-every``).
        stages: the commands that offer the flag (default: all three).
        cli: False for options set by the stage itself (``stage``, ``loss``): no flag.
        metavar: the placeholder in ``--help`` (default: from the type).
    """
    meta = dict(
        help=help,
        group=group,
        resume=resume,
        required=required,
        at_least=at_least,
        above=above,
        at_most=at_most,
        below=below,
        aliases=tuple(aliases),
        stages=stages,
        cli=cli,
        metavar=metavar,
    )
    return dataclasses.field(default=default, metadata={_META: meta})


@dataclass(frozen=True)
class OptionInfo:
    """One option of one stage: its declaration, resolved type and this stage's default."""

    name: str
    type: Any
    default: Any
    help: str
    group: str
    resume: bool
    required: bool
    at_least: float | None
    above: float | None
    at_most: float | None
    below: float | None
    aliases: tuple[str, ...]
    stages: tuple[str, ...] | None
    cli: bool
    metavar: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag, *self.aliases)

    @property
    def base(self) -> Any:
        """The type without ``| None``."""
        return _without_none(self.type)

    @property
    def optional(self) -> bool:
        return _without_none(self.type) is not self.type

    @property
    def is_flag(self) -> bool:
        """A boolean: ``--name`` / ``--no-name`` on the command line."""
        return self.base is bool

    @property
    def nargs(self) -> int:
        return len(typing.get_args(self.base)) if typing.get_origin(self.base) is tuple else 1

    @property
    def choices(self) -> tuple[str, ...] | None:
        return typing.get_args(self.base) if typing.get_origin(self.base) is Literal else None

    def placeholder(self) -> str:
        """What ``--help`` shows after the flag."""
        if self.metavar:
            return self.metavar
        if self.choices:
            return "[" + "|".join(self.choices) + "]"
        if self.nargs > 1:
            return " ".join(["FLOAT"] * self.nargs)
        return {int: "INTEGER", float: "FLOAT", str: "TEXT"}.get(self.base, "VALUE")

    def help_line(self) -> str:
        """The help text with this stage's default and the aliases, e.g. ``Peak learning rate. (default 0.001)``."""
        notes = []
        if self.default is not None and self.default != "":
            notes.append("default " + (("on" if self.default else "off") if self.is_flag else _show(self.default)))
        if self.aliases:
            notes.append("also " + ", ".join(self.aliases))
        return f"{self.help} ({'; '.join(notes)})" if notes else self.help


@functools.cache
def options_of(cls: type) -> dict[str, OptionInfo]:
    """Every field of the stage dataclass ``cls`` as an :class:`OptionInfo`, in field order.

    Raises:
        TypeError: a field is not declared with :func:`option` in ``cls`` or a base class.
    """
    infos = {}
    for f in dataclasses.fields(cls):
        declared = _declaration(cls, f.name)
        if declared is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option(default, help, group=...)")
        klass, meta = declared
        infos[f.name] = OptionInfo(name=f.name, type=_hints(klass)[f.name], default=f.default, **meta)
    return infos


def _declaration(cls: type, name: str) -> tuple[type, dict] | None:
    """The class that declares ``name`` with :func:`option`, and its metadata. A subclass that
    restates the field with a plain default changes the default only: type and help stay."""
    for klass in cls.__mro__:
        f = vars(klass).get("__dataclass_fields__", {}).get(name)
        if f is not None and _META in f.metadata and name in vars(klass).get("__annotations__", {}):
            return klass, f.metadata[_META]
    return None


def _hints(klass: type) -> dict[str, Any]:
    return typing.get_type_hints(klass)


def _without_none(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(_show(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------- checking


class Refused(ValueError):
    """A value does not fit its option; the message says what was expected and what was given."""


_INT_TEXT = re.compile(r"[+-]?\d+")


def convert(info: OptionInfo, value: Any, *, text: bool = False) -> Any:
    """``value`` as the option's type.

    Args:
        value: from a recipe or Python (``text=False``), or as typed on the command line
            (``text=True``: numbers are parsed, ``none`` means None for an optional option).

    Numbers for a float may be text (YAML 1.1 reads ``1e-3`` as text); an int must be a whole
    number (not ``true``, not ``3.7``, not the text ``"2"`` in a recipe).

    Raises:
        Refused: the value does not fit; the message starts with "must be".
    """
    if value is None or (text and info.optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if info.optional:
            return None
        raise Refused(f"must be {_expected(info.base)}, got nothing")
    return _convert(info.base, value, text)


def _convert(tp: Any, value: Any, text: bool) -> Any:
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise Refused(f"must be one of {', '.join(choices)}; got {value!r}")
    if typing.get_origin(tp) is tuple and typing.get_args(tp)[1:] == (Ellipsis,):  # any length
        if not isinstance(value, (list, tuple)):
            raise Refused(f"must be {_expected(tp)}, got {value!r}")
        return tuple(_convert(typing.get_args(tp)[0], v, text) for v in value)
    if typing.get_origin(tp) is tuple:
        parts = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(parts):
            raise Refused(f"must be {_expected(tp)}, got {value!r}")
        return tuple(_convert(p, v, text) for p, v in zip(parts, value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise Refused(f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text and isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            return int(value)
        hint = (
            " (write numbers without quotes)" if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()) else ""
        )
        raise Refused(f"must be a whole number, got {value!r}{hint}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise Refused(f"must be a number, got {value!r}")
        if not math.isfinite(number):
            raise Refused(f"must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise Refused(f"must be text, got {value!r} (put it in quotes)")
    raise TypeError(f"options of type {tp!r} are not supported; see mixitcli/train/options.py")


def _expected(tp: Any) -> str:
    if typing.get_origin(tp) is tuple and typing.get_args(tp)[1:] == (Ellipsis,):
        return "a list of names"
    if typing.get_origin(tp) is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(tp, str(tp))


def range_problem(info: OptionInfo, value: Any) -> str | None:
    """Why ``value`` (already of the option's type) is out of the option's bounds, or None.
    The bounds of a pair of numbers (``betas``) hold for each of them."""
    if isinstance(value, tuple):
        broken = sorted({b for v in value for b in _broken(info, v)}, key=str)
        listed = " ".join(_show(v) for v in value)
        return f"{info.name} must each be {' and '.join(broken)}, got {listed}" if broken else None
    broken = _broken(info, value)
    return f"{info.name} must be {' and '.join(broken)}, got {value}" if broken else None


def _broken(info: OptionInfo, value: Any) -> list[str]:
    """The bounds of ``info`` that the number ``value`` breaks, e.g. ``["< 1"]``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    bounds = (
        (info.at_least, ">=", operator.ge),
        (info.above, ">", operator.gt),
        (info.at_most, "<=", operator.le),
        (info.below, "<", operator.lt),
    )
    return [f"{sign} {bound}" for bound, sign, holds in bounds if bound is not None and not holds(value, bound)]
