"""Bundled example models (regenerate with ``python -m models.examples.make_examples``)."""
