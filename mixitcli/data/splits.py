"""Validation and test splits of stems collections: the standard MUSDB18-HQ validation tracks,
and tracks held out by a hash of their name where a collection has none (issue 10, issue 21).

Shared by `mixit prepare-stems` and `prepare-musdb` (:mod:`mixitcli.data.prepare_stems`) and the
raw MUSDB18-HQ reader that `mixit eval` uses (:mod:`mixitcli.data.musdb`), so that both agree.
"""

from __future__ import annotations

import hashlib
import math

from mixitcli.data.errors import DataError

VALID_SHARE = 0.10
MIN_VALID_TRACKS = 2
"""Without the standard validation tracks, about ``VALID_SHARE`` of the training tracks (and at
least ``MIN_VALID_TRACKS``) are held out for validation (issue 10)."""

NO_VALIDATION_FIX = (
    "make some with `mixit prepare-musdb ROOT --out DIR` (or `mixit prepare-stems ROOT --out DIR` for other stems): "
    "when ROOT/train holds none of the 14 standard validation tracks, it holds out --valid-tracks N training tracks "
    "for validation (default about 10 %, at least 2)"
)
"""The fix, quoted wherever an empty validation split is refused (finetune, select-channels)."""

VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)
"""The standard 14-track validation split, taken out of train (docs/method.md §2.2)."""


def held_out_tracks(
    names: list[str], count: int | None = None, *, option: str = "--valid-tracks", where: str = "ROOT/train"
) -> list[str]:
    """The training tracks held out for validation when none of the standard ones is present.

    The tracks whose names have the smallest BLAKE2b hashes are taken, so the choice depends
    on the names only (not on their order, the machine or the run) and mostly survives
    adding tracks. prepare-stems picks MoisesDB's test tracks the same way (``option``
    ``--test-tracks``, ``where`` the tree), then the validation tracks among the others.

    Args:
        names: the training track names.
        count: how many to hold out, 1 <= count < len(names); None: about 10 % and at least 2
            (``max(2, ceil(0.1 * n))``), but always leaving one training track.
        option, where: the option and the folder, for the message.

    Returns:
        The held-out names, sorted (empty when fewer than 2 tracks exist and ``count`` is None).

    Raises:
        DataError: ``count`` leaves no training track or is below 1.
    """
    if count is None:
        count = min(max(MIN_VALID_TRACKS, math.ceil(VALID_SHARE * len(names))), len(names) - 1)
    elif not 1 <= count < len(names):
        raise DataError(
            f"{option} {count}: {where} holds {len(names)} track(s); hold out between 1 and "
            f"{len(names) - 1} so that training keeps at least one"
            if len(names) > 1
            else f"{option} {count}: {where} holds {len(names)} track(s), too few to hold any out; add tracks"
        )
    ranked = sorted(names, key=lambda n: (hashlib.blake2b(n.encode(), digest_size=8).digest(), n))
    return sorted(ranked[: max(count, 0)])
