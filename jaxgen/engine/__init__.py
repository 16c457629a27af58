"""Continuous-batching generation engine: ``engine.py`` (public ``Engine``), ``scheduler.py`` (host side),
``step.py`` (compiled programs over the persistent slot state)."""
