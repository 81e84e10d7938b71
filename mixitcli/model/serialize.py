"""A model as plain types and back: its config, output names and weights (what checkpoints hold).

Kept apart from :mod:`mixitcli.model`'s loader so that :mod:`mixitcli.model.checkpoints` (reading
and averaging, used by the loader) and :mod:`mixitcli.train.checkpoint` (writing) can both use it.
"""

from __future__ import annotations

from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.config import ModelConfig

FORMAT = "mixit-model"


class ModelLoadError(Exception):
    """A model could not be loaded; the message says what was expected and what was found."""


def model_to_dict(model: BSLocoformer) -> dict:
    """Everything needed to rebuild ``model``: config, output names, weights (plain types only)."""
    return {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "stems": list(model.stems),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def model_from_dict(d: dict) -> BSLocoformer:
    """Inverse of :func:`model_to_dict` (strict: every parameter must be present)."""
    if d.get("format") != FORMAT:
        raise ModelLoadError(f"not a mixit model (format {d.get('format')!r}, expected {FORMAT!r})")
    model = BSLocoformer(ModelConfig.from_dict(d["model_config"]), stems=tuple(d["stems"]))
    model.load_state_dict(d["state_dict"], strict=True)
    return model
