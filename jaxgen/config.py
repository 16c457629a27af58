"""Frozen model configuration parsed from a Hugging Face ``config.json``.

Accepts both the transformers 4.x schema (``rope_theta`` + ``rope_scaling``, ``torch_dtype``) and the 5.x one
(``rope_parameters``, ``dtype``). Everything here is static: it decides shapes and the compiled program.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

from jaxgen.errors import ConfigError, read_json_object

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "gemma2", "gemma3_text",
                         "phi3", "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_5_text", "gemma4_text",
                         "deepseek_v3", "gpt_oss", "qwen3_5_moe_text", "qwen3_next")
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
    # longrope (Phi-3): per-frequency divisors, short below original_max_position_embeddings, long past it
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    def rotary_dim(self, head_dim: int) -> int:
        """How many leading dimensions of each head rotate (transformers: ``int(head_dim * partial_rotary_factor)``)."""
        if self.rope_type == "proportional":  # Gemma 4: cos/sin span the whole head; unrotated pairs get angle 0
            return head_dim
        return int(head_dim * self.partial_rotary_factor)


# --- per-layer specs: what one decoder Block reads (jaxgen.nn.transformer.Block) ----------------------------------
NORM_KINDS = ("rms", "gemma_rms", "layer", "rms_f32")
RESIDUALS = ("pre", "sandwich")
MLP_KINDS = ("gated", "plain", "moe", "dense+moe")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """A normalisation layer. ``rms``: ``w * normalize(x)``, normalized in float32 then cast (Llama); ``gemma_rms``:
    ``(1 + w) * normalize(x)`` all in float32, then cast (Gemma); ``layer``: LayerNorm with a bias (GPT-2);
    ``rms_f32``: ``w * normalize(x)`` all in float32, then cast (Gemma 4)."""

    kind: str = "rms"
    eps: float = 1e-6

    def __post_init__(self):
        assert self.kind in NORM_KINDS, self.kind


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """One layer's self-attention. ``rope=None``: no rotary embedding (learned absolute positions instead);
    ``window``: sliding-window size (None = full causal); ``scale``: multiplier of ``q . k`` (None = head_dim**-0.5;
    Gemma 2/3: ``query_pre_attn_scalar**-0.5``); ``softcap``: ``cap * tanh(scores / cap)`` before the mask;
    ``qk_norm``: per-head norm (the layer's norm kind) on q and k before RoPE."""

    rope: RopeConfig | None = RopeConfig()
    window: int | None = None
    scale: float | None = None
    softcap: float | None = None
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    output_gate: bool = False  # Qwen3.5: q_proj emits [q | gate] per head; out * sigmoid(gate) before o_proj
    # Gemma 4: per-layer sizes (None: the model's head_dim / num_key_value_heads), KV sharing and value options.
    head_dim: int | None = None
    num_kv_heads: int | None = None
    kv_source: int | None = None  # reuse this earlier layer's cached keys/values: no k/v projections, no own cache
    k_eq_v: bool = False  # no v_proj: the values are k_proj's output (before k_norm and RoPE)
    v_norm: bool = False  # scale-free RMS norm of the values over head_dim
    mla: "MLASpec | None" = None  # DeepSeek-V3: multi-head latent attention (jaxgen.nn.mla) instead of q/k/v/o
    sinks: bool = False  # gpt-oss: one learned logit per head joins each softmax (its probability is dropped)


@dataclasses.dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3). q: ``q_proj`` or, with ``q_lora_rank``, ``q_b_proj(norm(
    q_a_proj(x)))``, per head ``[nope | rope]``; ``kv_a_proj_with_mqa`` gives a latent of ``kv_lora_rank`` (normed)
    and one RoPE key of ``qk_rope_head_dim`` shared by all heads; ``kv_b_proj`` maps the latent to per-head
    ``[k_nope | v]``. The cache keeps the latent and the rotated key, not per-head keys/values. ``interleave``: the
    rotary pairs are ``(x0, x1), (x2, x3), ...`` (transformers' ``rope_interleave``)."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    interleave: bool = True


@dataclasses.dataclass(frozen=True)
class MoESpec:
    """A mixture-of-experts MLP (jaxgen.nn.moe): ``num_experts`` gated experts of width ``intermediate_size``, each
    token routed to ``top_k`` by a softmax (float32) over a bias-free router; ``norm_topk_prob``: the chosen
    probabilities renormalised to sum to 1 (Mixtral always; Qwen per config). ``shared_intermediate_size`` > 0 adds
    a dense shared expert scaled by ``sigmoid(shared_expert_gate(x))`` (Qwen2-MoE)."""

    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool = True
    shared_intermediate_size: int = 0
    # DeepSeek-V3 routing: sigmoid scores (+ e_score_correction_bias for the choice only), experts chosen within
    # the `topk_group` best of `n_group` groups, weights times `routed_scaling_factor`; its shared experts are
    # ungated (`shared_gate=False`).
    # "softmax" | "sigmoid" | "topk_softmax" (gpt-oss: top-k logits, then softmax) | "gemma4" (softmax routing of
    # the scale-free-normed input times a learned `router_scale`, the chosen weights times `per_expert_scale`)
    scoring: str = "softmax"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    shared_gate: bool = True
    # gpt-oss: a router bias, per-expert biases on every projection, and the clamped SwiGLU
    # ``(clip(up, -limit, limit) + 1) * g * sigmoid(alpha * g)`` with ``g = min(gate, limit)``.
    router_bias: bool = False
    expert_bias: bool = False
    swiglu_limit: float | None = None
    swiglu_alpha: float = 1.702


@dataclasses.dataclass(frozen=True)
class LinearAttentionSpec:
    """A Gated DeltaNet token mixer (Qwen3.5 / Qwen3-Next ``linear_attention`` layers, jaxgen.nn.linear_attention):
    its cache is a conv state ``[B, conv_kernel - 1, conv_dim]`` and a recurrent state ``[B, Hv, Dk, Dv]``."""

    num_k_heads: int
    num_v_heads: int
    k_head_dim: int
    v_head_dim: int
    conv_kernel: int = 4

    @property
    def conv_dim(self) -> int:
        return 2 * self.num_k_heads * self.k_head_dim + self.num_v_heads * self.v_head_dim


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One decoder layer. ``residual``: ``pre`` (``x + f(norm(x))``: input_layernorm, post_attention_layernorm before
    the MLP) or ``sandwich`` (Gemma 2/3: ``x + post_norm(f(pre_norm(x)))``, four norms); ``mlp``: ``gated``
    (``down(act(gate(x)) * up(x))``: SwiGLU, GeGLU), ``plain`` (``down(act(up(x)))``: GPT-2), ``moe`` (routed
    experts, jaxgen.nn.moe) or ``dense+moe`` (Gemma 4: a gated MLP and routed experts side by side, each with its
    own norms, summed)."""

    attention: AttentionSpec = AttentionSpec()
    norm: NormSpec = NormSpec()
    residual: str = "pre"
    mlp: str = "gated"
    activation: str = "silu"
    mlp_bias: bool = False
    moe: MoESpec | None = None  # set exactly when mlp is "moe" or "dense+moe"
    linear: LinearAttentionSpec | None = None  # set: a Gated DeltaNet layer instead of self-attention
    intermediate_size: int | None = None  # this layer's MLP width (None: the model's; Gemma 4's double-wide MLP)
    layer_scalar: bool = False  # Gemma 4: the layer's output is multiplied by a learned scalar `layer_scalar [1]`

    def __post_init__(self):
        assert self.residual in RESIDUALS and self.mlp in MLP_KINDS and self.activation in ACTIVATIONS, self
        assert (self.mlp in ("moe", "dense+moe")) == (self.moe is not None), self


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A multimodal checkpoint's image side: a SigLIP-style vision tower and what turns its patches into language
    model embeddings. ``kind``: ``"gemma3"`` (SigLIP tower, average pool to ``mm_tokens_per_image``, Gemma RMSNorm,
    projection) or ``"minicpmv4_6"`` (NaViT-packed tower with a 2x2 window-attention merger after layer
    ``insert_layer_id``, then ``merger_times`` 2x2 downsampling MLPs). Fields follow transformers' vision configs."""

    kind: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    text_hidden_size: int
    image_token_id: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    activation: str = "gelu_tanh"
    mm_tokens_per_image: int = 0  # gemma3: image tokens per image (a square number)
    insert_layer_id: int = -1  # minicpmv4_6: the window-attention merger runs after this encoder layer
    window_kernel_size: tuple[int, int] = (2, 2)
    merge_kernel_size: tuple[int, int] = (2, 2)
    merger_times: int = 1
    downsample_mode: str = "16x"  # minicpmv4_6: "4x" skips the window merger (4x more image tokens)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only LM. Field names follow transformers'.

    The model reads ``layers`` (one :class:`LayerSpec` per layer) and the model-level fields after it; a family's
    parse function (:mod:`jaxgen.families`) fills them. Left empty, they are derived from the Llama-line fields
    (``qkv_bias``, ``qk_norm``, ``sliding_window``, ``rope``, ...): a pre-norm SwiGLU decoder.
    """

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
    layers: tuple[LayerSpec, ...] = ()
    final_norm: NormSpec | None = None  # None: the last layer's norm
    embedding_multiplier: float | None = None  # Gemma: sqrt(hidden_size), rounded to the compute dtype
    final_logit_softcap: float | None = None  # Gemma 2/3: cap * tanh(logits / cap)
    position_embedding: str = "rope"  # "learned": absolute position embeddings (GPT-2's wpe), no rows past the context
    # Gemma 4 per-layer inputs: a second table [per_layer_vocab_size, layers * per_layer_input_size] (0: none)
    per_layer_input_size: int = 0
    per_layer_vocab_size: int = 0
    # DeepSeek-V3 multi-token-prediction layers: a checkpoint carries them as model.layers.{num_hidden_layers + j};
    # they are not part of the causal LM, and conversion drops them.
    mtp_layers: int = 0
    # The multimodal checkpoint type this is the language model of ("gemma3", "gemma4", "qwen3_5"), else None: its
    # weights live under model.language_model.* beside towers jaxgen does not load (jaxgen.families.multimodal).
    wrapper: str | None = None
    # Its vision side, when jaxgen reads the checkpoint's images too (Gemma 3, MiniCPM-V 4.6); None: text only.
    vision: VisionConfig | None = None

    def __post_init__(self):
        # Frozen: derived defaults are set once, here.
        if not self.layers:
            object.__setattr__(self, "layers", _llama_layers(self))
        if len(self.layers) != self.num_hidden_layers:
            raise ConfigError(f"{self.model_type}: {len(self.layers)} layer specs for num_hidden_layers="
                              f"{self.num_hidden_layers}.")
        if self.final_norm is None:
            object.__setattr__(self, "final_norm", self.layers[-1].norm)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def layer_head_dim(self, layer: int) -> int:
        return self.layers[layer].attention.head_dim or self.head_dim

    def layer_kv_heads(self, layer: int) -> int:
        return self.layers[layer].attention.num_kv_heads or self.num_key_value_heads

    def layer_cache_dims(self, layer: int) -> tuple[int, int, int]:
        """``(heads, key_dim, value_dim)`` of ``layer``'s cache entries: per-head keys/values, or for latent
        attention (DeepSeek-V3) one "head" holding the latent (``keys``) and the rotated shared key (``values``)."""
        mla = self.layers[layer].attention.mla
        if mla is not None:
            return 1, mla.kv_lora_rank, mla.qk_rope_head_dim
        d = self.layer_head_dim(layer)
        return self.layer_kv_heads(layer), d, d

    def layer_window(self, layer: int) -> int | None:
        """Sliding-window size of ``layer`` (None = full causal attention)."""
        return self.layers[layer].attention.window

    def num_params(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        norm = lambda spec, size: size * (2 if spec.kind == "layer" else 1)  # noqa: E731 (LayerNorm has a bias)
        total = v * h * (1 if self.tie_word_embeddings else 2) + norm(self.final_norm, h)
        total += self.max_position_embeddings * h * (self.position_embedding == "learned")
        p = self.per_layer_input_size
        if p:  # Gemma 4 per-layer inputs: table, model projection and its norm; per layer gate, projection, norm
            total += self.num_hidden_layers * p * (self.per_layer_vocab_size + h) + p
            total += self.num_hidden_layers * (2 * h * p + h)
        for layer, spec in enumerate(self.layers):
            a, lin = spec.attention, spec.linear
            i = spec.intermediate_size or self.intermediate_size
            total += spec.layer_scalar
            if lin is not None:  # Gated DeltaNet: qkv, z, b, a, out projections, conv, dt_bias, A_log, gated norm
                vd = lin.num_v_heads * lin.v_head_dim
                total += h * (lin.conv_dim + vd + 2 * lin.num_v_heads) + vd * h
                total += lin.conv_dim * lin.conv_kernel + 2 * lin.num_v_heads + lin.v_head_dim
            elif a.mla is not None:  # q (low-rank + norm, or plain), kv_a + norm, kv_b, o (biases: q_a, kv_a, o)
                m, n = a.mla, self.num_attention_heads
                qk = m.qk_nope_head_dim + m.qk_rope_head_dim
                kv_a = m.kv_lora_rank + m.qk_rope_head_dim
                if m.q_lora_rank is None:
                    total += h * n * qk
                else:
                    total += h * m.q_lora_rank + m.q_lora_rank * (1 + a.qkv_bias) + m.q_lora_rank * n * qk
                total += h * kv_a + kv_a * a.qkv_bias + m.kv_lora_rank
                total += m.kv_lora_rank * n * (m.qk_nope_head_dim + m.v_head_dim) + n * m.v_head_dim * h
                total += h * a.o_bias
            else:
                d = self.layer_head_dim(layer)
                q_size, kv_size = self.num_attention_heads * d, self.layer_kv_heads(layer) * d
                n_kv = 0 if a.kv_source is not None else (1 if a.k_eq_v else 2)  # k (and v) projections
                q_out = q_size * (2 if a.output_gate else 1)  # Qwen3.5's q_proj: [q | gate] per head
                total += h * (q_out + q_size) + n_kv * h * kv_size
                total += (q_out + n_kv * kv_size) * a.qkv_bias + h * a.o_bias
                total += (1 + (a.kv_source is None)) * norm(spec.norm, d) * a.qk_norm
            total += self.num_attention_heads * a.sinks
            if spec.moe is not None:  # experts, router, shared expert and its gate
                m = spec.moe
                total += 3 * h * (m.num_experts * m.intermediate_size + m.shared_intermediate_size)
                total += m.num_experts * m.router_bias + m.num_experts * (2 * m.intermediate_size + h) * m.expert_bias
                total += h * m.num_experts + h * (m.shared_intermediate_size > 0 and m.shared_gate)
                total += m.num_experts * (m.scoring == "sigmoid")  # e_score_correction_bias
                total += (h + m.num_experts) * (m.scoring == "gemma4")  # router scale, per-expert scale
            if spec.mlp == "dense+moe":  # Gemma 4: the dense MLP too, and three more norms
                total += 3 * h * i + 3 * norm(spec.norm, h)
            elif spec.moe is None:
                n_mats = 3 if spec.mlp == "gated" else 2
                total += n_mats * h * i + ((n_mats - 1) * i + h) * spec.mlp_bias
            total += (4 if spec.residual == "sandwich" else 2) * norm(spec.norm, h)
        return total

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> "ModelConfig":
        """Parse a transformers ``config.json`` dict (4.x or 5.x schema)."""
        from jaxgen.families import parse_config

        return parse_config(dict(raw), source)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read ``config.json`` from a checkpoint folder (or a path to the file itself)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ConfigError(f"{file}: no config.json here; point to a Hugging Face checkpoint folder "
                              "(config.json + *.safetensors) or a folder written by `jaxgen convert`.")
        return cls.from_hf_dict(read_json_object(file, ConfigError, "model settings"), file)


def _llama_layers(c: ModelConfig) -> tuple[LayerSpec, ...]:
    """The Llama line's layers from its flat fields: pre-norm RMSNorm, SwiGLU, RoPE, windows per ``layer_types``."""
    def window(layer: int) -> int | None:
        if c.sliding_window is None or (c.layer_types and c.layer_types[layer] != "sliding_attention"):
            return None
        return c.sliding_window

    norm = NormSpec("rms", c.rms_norm_eps)
    return tuple(LayerSpec(attention=AttentionSpec(rope=c.rope, window=window(i), qk_norm=c.qk_norm,
                                                   qkv_bias=c.qkv_bias, o_bias=c.o_bias),
                           norm=norm, mlp_bias=c.mlp_bias) for i in range(c.num_hidden_layers))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(raw: dict, key: str, source: str, kind: type = int) -> Any:
    if key not in raw or raw[key] is None:
        raise ConfigError(f"{source}: required field '{key}' is missing.")
    value = raw[key]
    if kind is int and (not _is_int(value) or value <= 0):
        raise ConfigError(f"{source}: field '{key}' must be a positive integer, got {value!r}.")
    return value


def _optional_int(raw: Mapping, key: str, source: str, default: int | None = None, minimum: int = 1) -> int | None:
    """``raw[key]`` as an int >= ``minimum`` (``default`` when absent or null). A float (4096.0), a bool or a string
    ("4k") is an error: transformers' own configs write plain integers."""
    value = raw.get(key)
    if value is None:
        return default
    if not _is_int(value) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{source}: field '{key}' must be {kind}, got {value!r}.")
    return value


def _optional_number(raw: Mapping, key: str, source: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(f"{source}: field '{key}' must be a finite number, got {value!r}.")
    return float(value)


def _bool(raw: Mapping, key: str, default: bool, source: str) -> bool:
    # bool("false") is True: a string here would silently turn the option on.
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: field '{key}' must be true or false, got {value!r}.")
    return value


def _token_id(raw: Mapping, key: str, source: str) -> int | None:
    value = raw.get(key)
    if value is not None and not _is_int(value):
        raise ConfigError(f"{source}: field '{key}' must be a token id (an integer) or null, got {value!r}.")
    return value


def _eos_ids(raw: Mapping, source: str) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    ids = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    if not all(_is_int(t) for t in ids):
        raise ConfigError(f"{source}: field 'eos_token_id' must be a token id (an integer) or a list of ids, got "
                          f"{eos!r}; a token's text such as \"</s>\" is not accepted (give its id).")
    return ids


def _positive_number(value: Any, key: str, source: str) -> float:
    if not _is_number(value) or not 0 < value < math.inf:
        raise ConfigError(f"{source}: field '{key}' must be a positive number, got {value!r}.")
    return float(value)


def _parse_rope(raw: dict, defaults: dict, source: str) -> RopeConfig:
    # 5.x: everything lives in `rope_parameters`; 4.x: `rope_theta` at top level, scaling in `rope_scaling`.
    params = raw.get("rope_parameters")
    for key in ("rope_parameters", "rope_scaling"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{source}: field '{key}' must be an object or null, got {raw[key]!r}.")
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
    orig = _optional_int(params, "original_max_position_embeddings", source)
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if params.get(key) is None:
                raise ConfigError(f"{source}: RoPE type 'llama3' needs '{key}' in rope_parameters/rope_scaling.")
    if rope_type == "yarn" and orig is None:
        # transformers falls back to max_position_embeddings (after dividing by factor for 4.x checkpoints).
        orig = _optional_int(raw, "max_position_embeddings", source, defaults["max_position_embeddings"])
    partial = _optional_number(params, "partial_rotary_factor", source)
    partial = (partial if partial is not None else _optional_number(raw, "partial_rotary_factor", source)) or 1.0
    if partial != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor={partial} is not supported (only 1.0).")
    return RopeConfig(
        rope_type=rope_type, theta=theta, factor=factor,
        original_max_position_embeddings=orig, truncate=_bool(params, "truncate", True, source),
        partial_rotary_factor=partial,
        **{k: _optional_number(params, k, source) for k in ("low_freq_factor", "high_freq_factor", "attention_factor",
                                                            "beta_fast", "beta_slow", "mscale", "mscale_all_dim")},
    )


def _layer_types(raw: dict, source: str) -> tuple[str, ...]:
    value = raw["layer_types"]
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise ConfigError(f"{source}: field 'layer_types' must be a list of strings, got {value!r}.")
    return tuple(value)


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
    if not _is_int(kv_heads) or kv_heads <= 0 or heads % kv_heads:
        raise ConfigError(f"{source}: num_key_value_heads={kv_heads!r} must be a positive divisor of "
                          f"num_attention_heads={heads}.")
    head_dim = _optional_int(raw, "head_dim", source, minimum=0) or hidden // heads  # null or 0: hidden / heads
    if not raw.get("head_dim") and hidden % heads:
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
    if model_type in ("qwen2", "qwen3") and not _bool(raw, "use_sliding_window", False, source):
        window = None
    if window is not None:
        if not _is_int(window) or window <= 0:
            raise ConfigError(f"{source}: sliding_window must be a positive integer or null, got {window!r}.")
        if raw.get("layer_types"):
            layer_types = _layer_types(raw, source)
        elif model_type in ("qwen2", "qwen3"):
            mwl = _optional_int(raw, "max_window_layers", source, 28, minimum=0)
            layer_types = tuple("sliding_attention" if i >= mwl else "full_attention" for i in range(layers))
        else:
            layer_types = ("sliding_attention",) * layers
    elif raw.get("layer_types") and model_type != "mistral":
        layer_types = _layer_types(raw, source)
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

    attention_bias = _bool(raw, "attention_bias", defaults["attention_bias"], source)
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = attention_bias
    eos_ids = _eos_ids(raw, source)
    dtype = raw.get("dtype", raw.get("torch_dtype"))
    if dtype is not None and not isinstance(dtype, str):
        raise ConfigError(f"{source}: field 'dtype' / 'torch_dtype' must be a string such as \"bfloat16\", got "
                          f"{dtype!r}.")
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
        max_position_embeddings=_optional_int(raw, "max_position_embeddings", source,
                                              defaults["max_position_embeddings"]),
        rope=_parse_rope(raw, defaults, source),
        tie_word_embeddings=_bool(raw, "tie_word_embeddings", defaults["tie_word_embeddings"], source),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=_bool(raw, "mlp_bias", defaults["mlp_bias"], source),
        qk_norm=model_type == "qwen3",
        sliding_window=window,
        layer_types=layer_types,
        hidden_act=act,
        bos_token_id=_token_id(raw, "bos_token_id", source),
        eos_token_id=eos_ids,
        pad_token_id=_token_id(raw, "pad_token_id", source),
        checkpoint_dtype=dtype,
    )
