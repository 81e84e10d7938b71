"""The four stems, in the one order every model output and stem array uses.

Every other module imports :data:`STEMS` from here (a module without dependencies, so that
the data stage and its worker processes need not import torch to know it). The paper's tables
list the stems in another order; that order is :data:`mixitcli.report.TABLE_STEMS`, used only
where results are written and printed.
"""

from __future__ import annotations

STEMS: tuple[str, ...] = ("bass", "drums", "vocals", "other")
"""Output order of every 4-output model, official and ours, and of every (n, c, t) stem array
(docs/method.md §8)."""
