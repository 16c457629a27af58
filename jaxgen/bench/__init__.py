"""Measuring generation speed: the machine's floor, warm timings with medians, and runners for jaxgen and
transformers. Shared by ``jaxgen bench`` and ``benchmarks/``; importing it never imports torch."""
