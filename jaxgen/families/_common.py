"""Parsing pieces shared by the non-Llama families (the general ones live in :mod:`jaxgen.config`)."""

from __future__ import annotations

from typing import Any

from jaxgen.config import _optional_int, _optional_number, _require
from jaxgen.errors import ConfigError

# transformers' ACT2FN names -> jaxgen's (gelu_new and gelu_pytorch_tanh are one tanh approximation).
ACTIVATION_NAMES = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                    "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def activation(raw: dict, key: str, default: str, source: str) -> str:
    name = raw.get(key) or default
    if name not in ACTIVATION_NAMES:
        raise ConfigError(f"{source}: {key} {name!r} is not supported; supported: {', '.join(ACTIVATION_NAMES)}.")
    return ACTIVATION_NAMES[name]


def positive(raw: dict, key: str, source: str, default: float | None) -> float | None:
    """``raw[key]`` as a positive finite number, ``default`` when absent or null."""
    value = _optional_number(raw, key, source)
    if value is None:
        return default
    if not value > 0:
        raise ConfigError(f"{source}: field '{key}' must be a positive number, got {raw[key]!r}.")
    return value


def head_dim(raw: dict, hidden: int, heads: int, source: str, key: str = "head_dim") -> int:
    """``raw[key]`` when given, else ``hidden / heads`` (which must divide)."""
    value = raw.get(key)
    if value:
        return _require(raw, key, source)
    if hidden % heads:
        raise ConfigError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads} and no "
                          f"{key} is given.")
    return hidden // heads


def dtype_name(raw: dict, source: str) -> str | None:
    dtype = raw.get("dtype", raw.get("torch_dtype"))
    if dtype is not None and not isinstance(dtype, str):
        raise ConfigError(f"{source}: field 'dtype' / 'torch_dtype' must be a string such as \"bfloat16\", got "
                          f"{dtype!r}.")
    return dtype


def reject(raw: dict, key: str, source: str, why: str, allowed: Any = (None, False)) -> None:
    """A config option jaxgen does not implement is an error, not silently ignored."""
    if raw.get(key) not in allowed:
        raise ConfigError(f"{source}: {key}={raw[key]!r} is not supported ({why}).")


def attention_sizes(raw: dict, source: str) -> tuple[int, int, int, int]:
    """``(hidden_size, num_attention_heads, num_hidden_layers, num_key_value_heads)``, checked: KV heads divide
    the attention heads (GQA / MQA)."""
    hidden = _require(raw, "hidden_size", source)
    heads = _require(raw, "num_attention_heads", source)
    layers = _require(raw, "num_hidden_layers", source)
    kv_heads = _optional_int(raw, "num_key_value_heads", source, heads)
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_key_value_heads={kv_heads} must divide num_attention_heads={heads}.")
    return hidden, heads, layers, kv_heads
