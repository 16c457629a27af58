"""Llama, Mistral, Qwen2, Qwen3: pre-norm RMSNorm decoders with SwiGLU and RoPE.

Their config.json parsing (4.x/5.x RoPE schemas, Qwen's ``use_sliding_window`` + ``max_window_layers``, biases)
is ``jaxgen.config._parse``; its flat fields derive the per-layer specs (``ModelConfig.__post_init__``).
"""

from __future__ import annotations

from jaxgen.config import ModelConfig, _parse


def parse(raw: dict, source: str) -> ModelConfig:
    return _parse(raw, source)
