"""mixit: music source separation with MixIT pre-training and BS-Locoformer.

The public Python API (see README, "Python API"):

- :func:`build_model` -- a fresh BS-Locoformer from a preset name.
- :func:`load_model` -- a mixit checkpoint, a run folder or an official model folder.
- :mod:`mixitcli.losses` -- thresholded SNR, the inactive-source loss and MixIT.

Heavy modules (torch) are imported on first use, so ``mixit --help`` stays fast.
"""

__version__ = "0.2.0.dev0"

__all__ = ["__version__", "build_model", "load_model"]


def __getattr__(name):
    if name in ("build_model", "load_model"):
        from mixitcli import model

        return getattr(model, name)
    raise AttributeError(f"module 'mixitcli' has no attribute {name!r}")
