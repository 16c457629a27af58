"""Every jaxgen parameter's dotted name and shape, computed from a :class:`ModelConfig` alone.

This mirrors ``jaxgen.nn`` (``CausalLM`` built from ``config.layers``) so that conversion can check a checkpoint
without importing jax or flax; ``tests/test_convert_shapes.py`` holds it equal to ``jaxgen.model.param_shapes`` for
every variant. One function serves every family because the model is one decoder read from per-layer specs.
"""

from __future__ import annotations

from typing import Callable

from jaxgen.config import SUPPORTED_MODEL_TYPES, ModelConfig, NormSpec

Shapes = dict[str, tuple[int, ...]]


def _norm(out: Shapes, name: str, spec: NormSpec, size: int) -> None:
    out[f"{name}.weight"] = (size,)
    if spec.kind == "layer":  # LayerNorm has a bias; the RMS norms do not
        out[f"{name}.bias"] = (size,)


def decoder_shapes(c: ModelConfig) -> Shapes:
    """The decoder of ``c.layers``: biases, q/k norms, four norms (sandwich residual), a gate projection (gated MLP)
    and learned positions only where the specs say so.

    Linear kernels are ``[in, out]`` (flax), embeddings ``[rows, hidden]``; a tied model has no ``lm_head``.
    """
    h, i = c.hidden_size, c.intermediate_size
    out: Shapes = {"model.embed_tokens.embedding": (c.vocab_size, h)}
    if c.position_embedding == "learned":
        out["model.embed_positions.embedding"] = (c.max_position_embeddings, h)
    for layer, spec in enumerate(c.layers):
        prefix, a = f"model.layers.{layer}", spec.attention
        norms = ["input_layernorm", "post_attention_layernorm"]
        if spec.residual == "sandwich":
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for name in norms:
            _norm(out, f"{prefix}.{name}", spec.norm, h)
        linears = [("self_attn.q_proj", h, c.q_size, a.qkv_bias), ("self_attn.k_proj", h, c.kv_size, a.qkv_bias),
                   ("self_attn.v_proj", h, c.kv_size, a.qkv_bias), ("self_attn.o_proj", c.q_size, h, a.o_bias)]
        if spec.mlp == "gated":
            linears.append(("mlp.gate_proj", h, i, spec.mlp_bias))
        linears += [("mlp.up_proj", h, i, spec.mlp_bias), ("mlp.down_proj", i, h, spec.mlp_bias)]
        for name, n_in, n_out, bias in linears:
            out[f"{prefix}.{name}.kernel"] = (n_in, n_out)
            if bias:
                out[f"{prefix}.{name}.bias"] = (n_out,)
        if a.qk_norm:  # one norm per head dimension, shared by all heads
            _norm(out, f"{prefix}.self_attn.q_norm", spec.norm, c.head_dim)
            _norm(out, f"{prefix}.self_attn.k_norm", spec.norm, c.head_dim)
    _norm(out, "model.norm", c.final_norm, h)
    if not c.tie_word_embeddings:
        out["lm_head.kernel"] = (h, c.vocab_size)
    return out


FAMILIES: dict[str, Callable[[ModelConfig], Shapes]] = {t: decoder_shapes for t in SUPPORTED_MODEL_TYPES}


def param_shapes(config: ModelConfig) -> Shapes:
    """``{dotted jaxgen name: shape}`` of every parameter the model built from ``config`` has."""
    return FAMILIES[config.model_type](config)
