"""Stem sets: the ordered names of a model's outputs and of a prepared data folder's stems.

A stem set is data, not a constant (issue 21): a prepared stems folder records its stems in
``summary.json``, a training run in ``config.yaml`` and every checkpoint, a model in
``model.stems``, a selection in its JSON. Every stage takes its stems and its output file names
from those records. :data:`STEMS` is the default set, MUSDB18-HQ's four stems (VDBO) in the
order of the authors' models; the paper's tables list them in another order,
:data:`mixitcli.report.TABLE_STEMS`, used only where results are written and printed.

This module has no dependencies, so that the data stage and its worker processes need not
import torch to know a stem set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

STEMS: tuple[str, ...] = ("bass", "drums", "vocals", "other")
"""VDBO: the output order of every 4-output model, official and ours, and the default stem set
(docs/method.md §8)."""

MIXTURE = "mixture"
"""The mixture's file name in a song folder; never a stem name."""

COMPLEMENT = "no_"
"""`mixit separate --two-stems STEM` writes STEM and ``no_STEM``, the sum of the other outputs."""

MAX_STEMS = 12
"""A stem set has at most as many stems as the MixIT model has outputs (docs/method.md §6)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class StemsError(ValueError):
    """A stem set is unusable (bad or repeated names, too many stems); the message says which and why."""


def check_stems(names: Iterable[str], *, what: str = "--stems") -> tuple[str, ...]:
    """``names`` as a stem set, after checking every name; all problems are reported at once.

    A stem name is a file name without a suffix (letters, digits, ``_`` and ``-``, starting
    with a letter or digit), is not ``mixture``, and appears once.

    Args:
        names: the stem names, in output order.
        what: where they come from, for the message (an option, a file).

    Returns:
        The names as a tuple, in the order given.

    Raises:
        StemsError: no name, a malformed or reserved name, a repeated name, or more than
            :data:`MAX_STEMS` names.
    """
    names = tuple(names)
    problems = []
    if not names:
        problems.append("no stem name given")
    bad = [n for n in names if not isinstance(n, str) or not _NAME.fullmatch(n)]
    if bad:
        problems.append(
            f"{', '.join(map(repr, bad))}: a stem name is a file name without a suffix "
            "(letters, digits, _ and -, starting with a letter or digit)"
        )
    if MIXTURE in names:
        problems.append(f"{MIXTURE!r} is the mixture's file name, not a stem")
    repeated = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if repeated:
        problems.append(f"repeated: {', '.join(repeated)} (each stem is named once)")
    if len(names) > MAX_STEMS:
        problems.append(f"{len(names)} stems; a model selects at most {MAX_STEMS} of the MixIT outputs")
    if problems:
        raise StemsError(f"{what} {','.join(map(str, names))}: " + "; ".join(problems))
    return names


def parse_stems(text: str, *, what: str = "--stems") -> tuple[str, ...]:
    """A comma-separated list of stem names (``"guitar,piano"``), checked by :func:`check_stems`."""
    return check_stems([part.strip() for part in text.split(",") if part.strip()], what=what)


def default_order(names: Iterable[str]) -> tuple[str, ...]:
    """The order of a stem set found in files: the models' VDBO order for the four MUSDB18-HQ
    stems, otherwise alphabetical (so that the same files always give the same order)."""
    found = set(names)
    return STEMS if found == set(STEMS) else tuple(sorted(found))


def describe(stems: Iterable[str]) -> str:
    """``bass, drums, vocals, other`` -- a stem set as the messages show it."""
    return ", ".join(stems)
