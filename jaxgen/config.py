"""Frozen model configuration parsed from a Hugging Face ``config.json``.

Accepts both the transformers 4.x schema (``rope_theta`` + ``rope_scaling``, ``torch_dtype``) and the 5.x one
(``rope_parameters``, ``dtype``). Everything here is static: it decides shapes and the compiled program.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from jaxgen.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
SUPPORTED_ACTIVATIONS = ("silu",)

# Per-family defaults for fields a config.json may omit (the transformers config classes' own defaults).
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False),
    "mistral": dict(rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=4096 * 32,
                    tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    "qwen2": dict(rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=32768, tie_word_embeddings=False,
                  attention_bias=True, mlp_bias=False),
    "qwen3": dict(rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=32768, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False),
}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings, in transformers' ``rope_parameters`` terms."""

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float | None = None
    # llama3
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    # yarn
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    partial_rotary_factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family decoder. Field names follow transformers'."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2; Llama/Qwen3 `attention_bias`)
    o_bias: bool = False  # bias on the output projection (Llama/Qwen3 `attention_bias`, not Qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # "full_attention" | "sliding_attention" per layer
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    checkpoint_dtype: str | None = None

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def layer_window(self, layer: int) -> int | None:
        """Sliding-window size of ``layer`` (None = full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    def num_params(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        attn += (self.q_size + 2 * self.kv_size) * self.qkv_bias + h * self.o_bias
        attn += 2 * self.head_dim * self.qk_norm
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        layer = attn + mlp + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + h

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> "ModelConfig":
        """Parse a transformers ``config.json`` dict (4.x or 5.x schema)."""
        return _parse(dict(raw), source)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read ``config.json`` from a checkpoint folder (or a path to the file itself)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ConfigError(f"{file}: no config.json here; point to a Hugging Face checkpoint folder "
                              "(config.json + *.safetensors) or a folder written by `jaxgen convert`.")
        try:
            with open(file) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file}: not valid JSON ({e}); re-save the config with transformers.") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: expected a JSON object, got {type(raw).__name__}.")
        return _parse(raw, file)


def _require(raw: dict, key: str, source: str, kind: type = int) -> Any:
    if key not in raw or raw[key] is None:
        raise ConfigError(f"{source}: required field '{key}' is missing.")
    value = raw[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{source}: field '{key}' must be a positive integer, got {value!r}.")
    return value


def _positive_number(value: Any, key: str, source: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{source}: field '{key}' must be a positive number, got {value!r}.")
    return float(value)


def _parse_rope(raw: dict, defaults: dict, source: str) -> RopeConfig:
    # 5.x: everything lives in `rope_parameters`; 4.x: `rope_theta` at top level, scaling in `rope_scaling`.
    params = raw.get("rope_parameters")
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", defaults["rope_theta"]))
    else:
        params = dict(params)
        if "rope_type" not in params and "rope_theta" not in params and all(isinstance(v, dict) for v in params.values()):
            raise ConfigError(f"{source}: per-layer-type 'rope_parameters' are not supported.")
        params.setdefault("rope_theta", raw.get("rope_theta", defaults["rope_theta"]))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{source}: RoPE type '{rope_type}' is not supported; supported: "
                          f"{', '.join(SUPPORTED_ROPE_TYPES)}.")
    theta = _positive_number(params["rope_theta"], "rope_theta", source)
    factor = params.get("factor")
    if rope_type in ("linear", "dynamic", "llama3") and factor is None:
        raise ConfigError(f"{source}: RoPE type '{rope_type}' needs 'factor' in rope_parameters/rope_scaling.")
    if factor is not None:
        factor = _positive_number(factor, "rope factor", source)
    orig = params.get("original_max_position_embeddings")
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if params.get(key) is None:
                raise ConfigError(f"{source}: RoPE type 'llama3' needs '{key}' in rope_parameters/rope_scaling.")
    if rope_type == "yarn" and orig is None:
        # transformers falls back to max_position_embeddings (after dividing by factor for 4.x checkpoints).
        orig = raw.get("max_position_embeddings", defaults["max_position_embeddings"])
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) or 1.0)
    if partial != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor={partial} is not supported (only 1.0).")
    return RopeConfig(
        rope_type=rope_type, theta=theta, factor=factor,
        low_freq_factor=params.get("low_freq_factor"), high_freq_factor=params.get("high_freq_factor"),
        original_max_position_embeddings=orig, attention_factor=params.get("attention_factor"),
        beta_fast=params.get("beta_fast"), beta_slow=params.get("beta_slow"), mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"), truncate=bool(params.get("truncate", True)),
        partial_rotary_factor=partial,
    )


def _parse(raw: dict, source: str) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; jaxgen supports "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
    defaults = _FAMILY_DEFAULTS[model_type]
    hidden = _require(raw, "hidden_size", source)
    heads = _require(raw, "num_attention_heads", source)
    kv_heads = raw.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else kv_heads
    if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
        raise ConfigError(f"{source}: num_key_value_heads={kv_heads!r} must be a positive divisor of "
                          f"num_attention_heads={heads}.")
    head_dim = raw.get("head_dim") or hidden // heads
    if raw.get("head_dim") is None and hidden % heads:
        raise ConfigError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads} "
                          "and no head_dim is given.")
    if head_dim % 2:
        raise ConfigError(f"{source}: head_dim={head_dim} must be even for rotary embeddings.")
    act = raw.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported; supported: {SUPPORTED_ACTIVATIONS}.")
    layers = _require(raw, "num_hidden_layers", source)

    # Sliding window: Mistral applies it to every layer when set; Qwen2/3 only with use_sliding_window, on
    # the layers that `layer_types` (5.x) or `max_window_layers` (4.x) marks.
    window = raw.get("sliding_window")
    layer_types: tuple[str, ...] = ()
    if model_type in ("qwen2", "qwen3") and not raw.get("use_sliding_window", False):
        window = None
    if window is not None:
        if not isinstance(window, int) or window <= 0:
            raise ConfigError(f"{source}: sliding_window must be a positive integer or null, got {window!r}.")
        if raw.get("layer_types"):
            layer_types = tuple(raw["layer_types"])
        elif model_type in ("qwen2", "qwen3"):
            mwl = raw.get("max_window_layers", 28)
            layer_types = tuple("sliding_attention" if i >= mwl else "full_attention" for i in range(layers))
        else:
            layer_types = ("sliding_attention",) * layers
    elif raw.get("layer_types") and model_type != "mistral":
        layer_types = tuple(raw["layer_types"])
    if layer_types:
        if len(layer_types) != layers:
            raise ConfigError(f"{source}: layer_types has {len(layer_types)} entries, num_hidden_layers={layers}.")
        bad = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
        if bad:
            raise ConfigError(f"{source}: unsupported layer_types {bad}; use full_attention/sliding_attention.")
    # One canonical form for "no layer slides" (4.x and 5.x files of the same model must compare equal, or the
    # jit cache would compile the same program twice).
    if window is None or "sliding_attention" not in layer_types:
        window, layer_types = None, ()

    attention_bias = bool(raw.get("attention_bias", defaults["attention_bias"]))
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = attention_bias
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    vocab = _require(raw, "vocab_size", source)
    return ModelConfig(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=_require(raw, "intermediate_size", source),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=int(head_dim),
        rms_norm_eps=_positive_number(raw.get("rms_norm_eps", defaults["rms_norm_eps"]), "rms_norm_eps", source),
        max_position_embeddings=int(raw.get("max_position_embeddings") or defaults["max_position_embeddings"]),
        rope=_parse_rope(raw, defaults, source),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", defaults["tie_word_embeddings"])),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(raw.get("mlp_bias", defaults["mlp_bias"])),
        qk_norm=model_type == "qwen3",
        sliding_window=window,
        layer_types=layer_types,
        hidden_act=act,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=eos_ids,
        pad_token_id=raw.get("pad_token_id"),
        checkpoint_dtype=raw.get("dtype", raw.get("torch_dtype")),
    )
