"""Data: preparing FMA, MUSDB18-HQ and any stems collection, and the datasets that feed training (docs/method.md §2).

- :mod:`~mixitcli.data.fma`: `mixit prepare-fma` (scan, parallel resumable clip cutting, shard merge).
- :mod:`~mixitcli.data.clips`: the per-file rules (sample rate, channels, clips, silence, store).
- :mod:`~mixitcli.data.manifest`: the prepared folder's formats and the fast clip reader.
- :mod:`~mixitcli.data.layouts`: where a collection's stems are (folders, MoisesDB), header checks.
- :mod:`~mixitcli.data.prepare_stems`: `mixit prepare-stems`, any stem set, one song per worker task.
- :mod:`~mixitcli.data.prepared`: reading a prepared stems folder, checked line by line.
- :mod:`~mixitcli.data.sad`, :mod:`~mixitcli.data.splits`: source activity detection; validation and test splits.
- :mod:`~mixitcli.data.musdb`: the raw MUSDB18-HQ reader and layout check, and `mixit prepare-musdb`.
- :mod:`~mixitcli.data.samplers`: mixtures of mixtures, dynamic mixing, validation sets, IndexSampler.
- :mod:`~mixitcli.data.errors`: the typed errors.
"""

from mixitcli.data.errors import DataError, LayoutError, MetadataError, PreparedDataError, PrepareError

__all__ = ["DataError", "LayoutError", "MetadataError", "PrepareError", "PreparedDataError"]
