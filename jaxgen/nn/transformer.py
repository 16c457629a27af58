"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) as Flax NNX modules with transformers' names.

Parameter paths mirror transformers' state-dict keys (``model.layers.3.self_attn.q_proj.kernel`` is
``model.layers.3.self_attn.q_proj.weight`` transposed), so conversion is a short table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.cache import KVCache, attention_mask, init_cache, write_valid
from jaxgen.config import ModelConfig
from jaxgen.nn.attention import Attention
from jaxgen.nn.layers import MLP, RMSNorm, linear
from jaxgen.nn.rope import rope_cos_sin


def _precision(dtype) -> jax.lax.Precision:
    # float32 means "parity mode": keep full precision even where the backend would default to TF32/bf16 passes.
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(config, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.mlp_bias, dtype=dtype,
                       param_dtype=param_dtype, precision=precision, rngs=rngs)

    def __call__(self, x, cos, sin, k_cache, v_cache, index, mask):
        h, k_cache, v_cache = self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, index, mask)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k_cache, v_cache


class DecoderModel(nnx.Module):
    """``model.*``: embeddings, decoder layers and the final norm."""

    def __init__(self, config: ModelConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([DecoderLayer(config, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                             rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)


class CausalLM(nnx.Module):
    """Decoder plus LM head. Call it through :func:`jaxgen.model.make_step` for a pure step function."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        precision = _precision(dtype)
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.model = DecoderModel(config, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = linear(config.hidden_size, config.vocab_size, False, dtype, param_dtype, precision, rngs)
        self.precision = precision

    def __call__(self, tokens: Array, positions: Array, cache: KVCache | None, mask: Array,
                 logits_positions: Array | None = None) -> tuple[Array, KVCache]:
        """Run ``tokens[B, T]`` at ``positions[B, T]`` into ``cache`` starting at slot ``cache.index``.

        ``mask[B, T]`` is 1 for real tokens, 0 for padding. Returns float32 logits ``[B, T, V]`` (or ``[B, V]`` for
        the single position ``logits_positions[B]`` when given) and the updated cache. ``cache=None`` runs a plain
        causal forward pass (training, scoring) over a cache of exactly ``T`` slots.
        """
        cfg = self.config
        b, t = tokens.shape
        if cache is None:
            cache = init_cache(cfg, b, t, self.dtype)
        cache = write_valid(cache, mask)
        masks = {w: attention_mask(cache, t, w) for w in {cfg.layer_window(i) for i in range(cfg.num_hidden_layers)}}
        cos, sin = rope_cos_sin(cfg, positions, self.dtype)
        x = self.model.embed_tokens(tokens)
        keys, values = list(cache.keys), list(cache.values)
        for i, layer in enumerate(self.model.layers):
            x, keys[i], values[i] = layer(x, cos, sin, keys[i], values[i], cache.index, masks[cfg.layer_window(i)])
        if logits_positions is not None:
            x = jnp.take_along_axis(x, logits_positions[:, None, None], axis=1)[:, 0]
        x = self.model.norm(x)
        if cfg.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(x)
        else:
            logits = self.lm_head(x)
        cache = cache.replace(keys=tuple(keys), values=tuple(values), index=cache.index + t)
        return logits.astype(jnp.float32), cache
