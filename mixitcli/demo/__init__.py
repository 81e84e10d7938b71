"""The demo's synthetic data (issue 6): not part of the pipeline, only what `make demo` feeds it.

- :mod:`~mixitcli.demo.synth`: synthetic multi-instrument songs with true stems, from a seed.
- :mod:`~mixitcli.demo.data`: `mixit make-demo-data`, the two datasets written from those songs.
"""
