"""Randomising the weights transformers initialises to constants, shared by the test fixtures (conftest.py and the
vision-language checkpoints of tests/vlm_*.py); imports only torch, so the benchmarks can reuse the fixtures."""

from __future__ import annotations

import torch


def randomize_vectors(model, seed: int = 1, also: tuple[str, ...] = ()) -> None:
    """Add ``0.3 * randn`` (a generator seeded with ``seed``) in place to every 1-D parameter (norm weights and
    biases, which transformers sets to 1 / 0 and which would hide a dropped or swapped one), to parameters named
    ``*_bias`` (gpt-oss's expert biases are [E, width]), to those whose names contain one of ``also``, and to the
    saved buffers that are weights (Gemma 4's layer scalars, DeepSeek-V3's routing bias)."""
    gen = torch.Generator().manual_seed(seed)
    scalars = [b for name, b in model.named_buffers() if name.endswith(("layer_scalar", "e_score_correction_bias"))]
    with torch.no_grad():
        for name, p in [*model.named_parameters(), *((None, b) for b in scalars)]:
            if p.ndim == 1 or (name or "").endswith("_bias") or any(a in (name or "") for a in also):
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
