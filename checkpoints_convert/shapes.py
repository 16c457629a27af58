"""Every jaxgen parameter's dotted name and shape, computed from a :class:`ModelConfig` alone.

This mirrors ``jaxgen.nn`` (``CausalLM``) so that conversion can check a checkpoint without importing jax or
flax; ``tests/test_convert_shapes.py`` holds it equal to ``jaxgen.model.param_shapes`` for every variant.
"""

from __future__ import annotations

from typing import Callable

from jaxgen.config import ModelConfig

Shapes = dict[str, tuple[int, ...]]


def llama_shapes(c: ModelConfig) -> Shapes:
    """Llama, Mistral, Qwen2 and Qwen3: biases and per-head q/k norms only where the config has them.

    Linear kernels are ``[in, out]`` (flax), the embedding ``[vocab, hidden]``; a tied model has no ``lm_head``.
    """
    h, i = c.hidden_size, c.intermediate_size
    out: Shapes = {"model.embed_tokens.embedding": (c.vocab_size, h)}
    linears = (("self_attn.q_proj", h, c.q_size, c.qkv_bias), ("self_attn.k_proj", h, c.kv_size, c.qkv_bias),
               ("self_attn.v_proj", h, c.kv_size, c.qkv_bias), ("self_attn.o_proj", c.q_size, h, c.o_bias),
               ("mlp.gate_proj", h, i, c.mlp_bias), ("mlp.up_proj", h, i, c.mlp_bias),
               ("mlp.down_proj", i, h, c.mlp_bias))
    for layer in range(c.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        out[f"{prefix}.input_layernorm.weight"] = (h,)
        out[f"{prefix}.post_attention_layernorm.weight"] = (h,)
        for name, n_in, n_out, bias in linears:
            out[f"{prefix}.{name}.kernel"] = (n_in, n_out)
            if bias:
                out[f"{prefix}.{name}.bias"] = (n_out,)
        if c.qk_norm:  # one norm per head dimension, shared by all heads
            out[f"{prefix}.self_attn.q_norm.weight"] = (c.head_dim,)
            out[f"{prefix}.self_attn.k_norm.weight"] = (c.head_dim,)
    out["model.norm.weight"] = (h,)
    if not c.tie_word_embeddings:
        out["lm_head.kernel"] = (h, c.vocab_size)
    return out


FAMILIES: dict[str, Callable[[ModelConfig], Shapes]] = {
    "llama": llama_shapes,
    "mistral": llama_shapes,
    "qwen2": llama_shapes,
    "qwen3": llama_shapes,
}


def param_shapes(config: ModelConfig) -> Shapes:
    """``{dotted jaxgen name: shape}`` of every parameter the model built from ``config`` has."""
    return FAMILIES[config.model_type](config)
