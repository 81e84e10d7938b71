"""A model as plain types and back: its config, output names and weights (what checkpoints hold).

Kept apart from :mod:`mixitcli.model`'s loader so that :mod:`mixitcli.model.checkpoints` (reading
and averaging, used by the loader) and :mod:`mixitcli.train.checkpoint` (writing) can both use it.
"""

from __future__ import annotations

import torch

from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.config import PRESETS, ModelConfig

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
    """Inverse of :func:`model_to_dict` (strict: every parameter must be present and finite).

    Raises:
        ModelLoadError: not a mixit model; weights that do not fit the configuration (one
            line: missing, unexpected and reshaped weights, and the likely cause); or a weight
            that is not finite (the first one is named).
    """
    if d.get("format") != FORMAT:
        raise ModelLoadError(f"not a mixit model (format {d.get('format')!r}, expected {FORMAT!r})")
    model = BSLocoformer(ModelConfig.from_dict(d["model_config"]), stems=tuple(d["stems"]))
    state = d["state_dict"]
    misfit = fit_problem(model, state)
    if misfit:
        raise ModelLoadError(misfit)
    bad = first_nonfinite(state)
    if bad is not None:
        raise ModelLoadError(nonfinite_message(*bad))
    model.load_state_dict(state, strict=True)
    return model


def first_nonfinite(state: dict) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first floating-point tensor of ``state`` (in its
    order) holding NaN or infinity; None when every value is finite."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            bad = t.numel() - int(torch.isfinite(t).sum())
            if bad:
                return name, bad, t.numel()
    return None


def nonfinite_message(name: str, bad: int, size: int, *, fix: str = "use an earlier checkpoint of its run") -> str:
    """What :func:`first_nonfinite` found, and ``fix``."""
    return (
        f"weight {name} holds {bad} non-finite value(s) (NaN or infinity) of {size}: a model with them "
        f"separates nothing but noise or silence, so it is refused; {fix}"
    )


def fit_problem(model: BSLocoformer, state: dict) -> str | None:
    """Why the weights ``state`` do not fit ``model`` (built from their saved configuration), in
    one line, or None: the missing and unexpected names, the tensors of another shape, and
    the sizes of the model the weights were made for when those can be read from them."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k} {given[k]} for {expected[k]}" for k in expected if k in given and given[k] != expected[k]]
    if not (missing or unexpected or reshaped):
        return None
    parts = [
        f"{len(names)} {what} ({_few(names)})"
        for names, what in ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape"))
        if names
    ]
    cause = _likely_cause(model.config, state)
    return f"the weights do not fit the model configuration saved with them: {'; '.join(parts)}" + (
        f". Likely cause: {cause}" if cause else ""
    )


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")


def _likely_cause(config: ModelConfig, state: dict) -> str:
    """The sizes the weights imply where they differ from ``config``, and what that suggests,
    e.g. ``the weights are of a model with 12 outputs, the configuration says 4 outputs: another
    number of outputs``; '' when the sizes cannot be read or agree."""
    implied = {}  # name: (from the weights, from the configuration)
    try:
        implied["outputs"] = (state["decoder.heads.0.fc3.weight"].shape[0], config.n_outputs)
        implied["d_model"] = (state["encoder.projs.0.weight"].shape[0], config.d_model)
    except (KeyError, AttributeError, IndexError):
        pass
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("separator.") and k.split(".")[1].isdigit()}
    if blocks:
        implied["blocks"] = (max(blocks) + 1, config.n_blocks)
    differ = {name: sizes for name, sizes in implied.items() if sizes[0] != sizes[1]}
    if not differ:
        return ""

    def said(which: int) -> str:
        return ", ".join(
            f"{sizes[which]} outputs" if name == "outputs" else f"{name} {sizes[which]}"
            for name, sizes in differ.items()
        )

    if list(differ) == ["outputs"]:
        kind = "another number of outputs"
    else:
        preset = next((name for name, c in PRESETS.items() if c.d_model == implied.get("d_model", (None,))[0]), None)
        kind = f"another preset ({preset})" if preset else "another model"
    return f"the weights are of a model with {said(0)}, the configuration says {said(1)}: {kind}"
