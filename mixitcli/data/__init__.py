"""Data: preparing FMA and MUSDB18-HQ, and the datasets that feed training (docs/method.md §2).

- :mod:`~mixitcli.data.fma`: `mixit prepare-fma` (scan, parallel resumable clip cutting, shard merge).
- :mod:`~mixitcli.data.clips`: the per-file rules (sample rate, channels, clips, silence, store).
- :mod:`~mixitcli.data.manifest`: the prepared folder's formats and the fast clip reader.
- :mod:`~mixitcli.data.musdb`: the MUSDB18-HQ reader, layout check, SAD and `mixit prepare-musdb`.
- :mod:`~mixitcli.data.samplers`: mixtures of mixtures, dynamic mixing, validation sets, IndexSampler.
- :mod:`~mixitcli.data.errors`: the typed errors.
"""

from mixitcli.data.errors import DataError, LayoutError, MetadataError, PreparedDataError, PrepareError

__all__ = ["DataError", "LayoutError", "MetadataError", "PrepareError", "PreparedDataError"]
