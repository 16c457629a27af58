"""The decoder as Flax NNX modules with transformers' names, built from per-layer specs (``ModelConfig.layers``).

One :class:`Block` reads its :class:`~jaxgen.config.LayerSpec`: norm kind, residual layout, attention options,
MLP kind. Families differ only in those specs and in a few model-level fields (embedding scale, learned
positions, final soft-cap); there are no per-family classes.

Parameter paths mirror transformers' Llama/Gemma state-dict keys (``model.layers.3.self_attn.q_proj.kernel`` is
``model.layers.3.self_attn.q_proj.weight`` transposed); families with other names (GPT-2, Phi-3's fused
projections) are mapped onto these by ``checkpoints_convert.tables``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.cache import KVCache, attention_mask, init_cache, write_valid
from jaxgen.config import LayerSpec, ModelConfig
from jaxgen.nn.attention import Attention
from jaxgen.nn.linear_attention import GatedDeltaNet
from jaxgen.nn.layers import ACTIVATIONS, MLP, linear, norm, parity_precision
from jaxgen.nn.moe import MoE
from jaxgen.nn.mla import MLA
from jaxgen.nn.rope import rope_cos_sin
from jaxgen.nn.vision import ImageInputs


def image_encoder(config, **kw) -> nnx.Module:
    """The image encoder of ``config.kind``: ``(pixel_values, target_sizes) -> features[N, text_hidden]``."""
    if config.kind == "gemma3":
        from jaxgen.nn.gemma3_vision import Gemma3ImageEncoder

        return Gemma3ImageEncoder(config, **kw)
    from jaxgen.nn.minicpmv import MiniCPMVImageEncoder

    return MiniCPMVImageEncoder(config, **kw)


class Block(nnx.Module):
    """One decoder layer. ``pre``: ``x + attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``.
    ``sandwich`` (Gemma 2/3): each sublayer's output is normed too before the residual add, so transformers'
    ``post_attention_layernorm`` is a post-norm there and ``pre_feedforward_layernorm`` is the MLP's input norm."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        h = config.hidden_size
        self.input_layernorm = norm(spec.norm, h, param_dtype)
        self.linear = spec.linear is not None
        if self.linear:  # Qwen3.5 linear_attention layer: Gated DeltaNet with its own (conv, recurrent) state
            self.linear_attn = GatedDeltaNet(h, spec.linear, spec.norm.eps, dtype=dtype, param_dtype=param_dtype,
                                             precision=precision, rngs=rngs)
        else:  # DeepSeek-V3: latent attention (its cache entries are the latent and the rotated shared key)
            attention = MLA if spec.attention.mla is not None else Attention
            self.self_attn = attention(config, spec, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                       rngs=rngs)
        self.post_attention_layernorm = norm(spec.norm, h, param_dtype)
        self.sandwich = spec.residual == "sandwich"
        if self.sandwich:
            self.pre_feedforward_layernorm = norm(spec.norm, h, param_dtype)
            self.post_feedforward_layernorm = norm(spec.norm, h, param_dtype)
        if spec.mlp == "moe":
            self.mlp = MoE(h, spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        else:
            self.mlp = MLP(h, spec.intermediate_size or config.intermediate_size, spec, dtype=dtype,
                           param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.parallel_moe = spec.mlp == "dense+moe"
        if self.parallel_moe:  # Gemma 4: routed experts beside the dense MLP, with transformers' norm names
            self.moe = MoE(h, spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
            self.post_feedforward_layernorm_1 = norm(spec.norm, h, param_dtype)
            self.pre_feedforward_layernorm_2 = norm(spec.norm, h, param_dtype)
            self.post_feedforward_layernorm_2 = norm(spec.norm, h, param_dtype)
        p = config.per_layer_input_size
        self.per_layer = p > 0
        if self.per_layer:  # Gemma 4: x + norm(proj(act(gate(x)) * per_layer_input)) after the MLP
            self.per_layer_input_gate = linear(h, p, False, dtype, param_dtype, precision, rngs)
            self.per_layer_projection = linear(p, h, False, dtype, param_dtype, precision, rngs)
            self.post_per_layer_input_norm = norm(spec.norm, h, param_dtype)
            self.activation = spec.activation
        if spec.layer_scalar:
            self.layer_scalar = nnx.Param(jnp.ones((1,), param_dtype))
        self.scaled = spec.layer_scalar

    def __call__(self, x, rope, k_cache, v_cache, index, mask, token_mask=None, per_layer_input=None):
        x, k_cache, v_cache = self._layer(x, rope, k_cache, v_cache, index, mask, token_mask)
        if self.per_layer:  # per_layer_input [B, T, P]
            g = ACTIVATIONS[self.activation](self.per_layer_input_gate(x)) * per_layer_input
            x = x + self.post_per_layer_input_norm(self.per_layer_projection(g))
        if self.scaled:
            x = x * self.layer_scalar[...].astype(x.dtype)
        return x, k_cache, v_cache

    def _layer(self, x, rope, k_cache, v_cache, index, mask, token_mask):
        # A linear layer's two cache entries are its (conv, recurrent) states and it reads the token mask [B, T].
        mixer = (lambda y: self.linear_attn(y, k_cache, v_cache, token_mask)) if self.linear else (
            lambda y: self.self_attn(y, rope, k_cache, v_cache, index, mask))
        h, k_cache, v_cache = mixer(self.input_layernorm(x))
        if self.sandwich:
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self._feedforward(x)), k_cache, v_cache
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k_cache, v_cache


    def _feedforward(self, x: Array) -> Array:
        """The sandwich layout's MLP branch before its post-norm: ``mlp(pre_norm(x))``, plus (Gemma 4) the routed
        experts, each branch normed on its own: ``norm_1(mlp(...)) + norm_2(moe(pre_norm_2(x), routed by x))``."""
        h = self.mlp(self.pre_feedforward_layernorm(x))
        if not self.parallel_moe:
            return h
        experts = self.moe(self.pre_feedforward_layernorm_2(x), route_x=x)
        return self.post_feedforward_layernorm_1(h) + self.post_feedforward_layernorm_2(experts)


class DecoderModel(nnx.Module):
    """``model.*``: embeddings (and learned positions), decoder layers and the final norm."""

    def __init__(self, config: ModelConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        embed = lambda n, width=config.hidden_size: nnx.Embed(  # noqa: E731
            n, width, dtype=dtype, param_dtype=param_dtype, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.embed_tokens = embed(config.vocab_size)
        p = config.per_layer_input_size
        if p:  # Gemma 4 per-layer inputs: one packed table and one projection for all layers
            self.embed_tokens_per_layer = embed(config.per_layer_vocab_size, config.num_hidden_layers * p)
            self.per_layer_model_projection = linear(config.hidden_size, config.num_hidden_layers * p, False, dtype,
                                                     param_dtype, precision, rngs)
            self.per_layer_projection_norm = norm(config.final_norm, p, param_dtype)
        if config.position_embedding == "learned":
            self.embed_positions = embed(config.max_position_embeddings)
        self.layers = nnx.List([Block(config, spec, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                      rngs=rngs) for spec in config.layers])
        self.norm = norm(config.final_norm, config.hidden_size, param_dtype)


def _rope_key(config: ModelConfig, spec: LayerSpec):
    rope = spec.attention.rope
    return None if rope is None else (rope, rope.rotary_dim(spec.attention.head_dim or config.head_dim))


class CausalLM(nnx.Module):
    """Decoder plus LM head. Call it through :func:`jaxgen.model.make_step` for a pure step function."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        precision = parity_precision(dtype)
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.model = DecoderModel(config, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = linear(config.hidden_size, config.vocab_size, False, dtype, param_dtype, precision, rngs)
        if config.vision is not None:  # vision.*: the image encoder (its tower and projector / merger)
            self.vision = image_encoder(config.vision, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                        rngs=rngs)
        self.precision = precision

    def __call__(self, tokens: Array, positions: Array, cache: KVCache | None, mask: Array,
                 logits_positions: Array | None = None, images: ImageInputs | None = None) -> tuple[Array, KVCache]:
        """Run ``tokens[B, T]`` at ``positions[B, T]`` into ``cache`` starting at slot ``cache.index``.

        ``mask[B, T]`` is 1 for real tokens, 0 for padding. Returns float32 logits ``[B, T, V]`` (or ``[B, V]`` for
        the single position ``logits_positions[B]`` when given) and the updated cache. ``cache=None`` runs a plain
        causal forward pass (training, scoring) over a cache of exactly ``T`` slots. ``images`` (a multimodal
        model's prompt): the image encoder runs on its pixels and its features replace the embeddings of the
        placeholder positions (:class:`~jaxgen.nn.vision.ImageInputs`).
        """
        cfg = self.config
        b, t = tokens.shape
        if cache is None:
            cache = init_cache(cfg, b, t, self.dtype)
        cache = write_valid(cache, mask)
        # One mask per distinct window and one cos/sin table per distinct RoPE (Gemma 3: local and global).
        blocks = None if images is None else images.blocks
        masks = {w: attention_mask(cache, t, w, blocks) for w in {spec.attention.window for spec in cfg.layers}}
        ropes = {key: rope_cos_sin(key[0], key[1], cfg.max_position_embeddings, positions, self.dtype)
                 for key in {_rope_key(cfg, spec) for spec in cfg.layers} if key is not None}
        x = self.model.embed_tokens(tokens)
        if cfg.embedding_multiplier is not None:
            # Gemma: sqrt(hidden) rounded to the compute dtype first (55.4256 becomes 55.5 in bfloat16), as
            # transformers does, rather than scaling in float32.
            x = x * jnp.asarray(cfg.embedding_multiplier, x.dtype)
        if cfg.position_embedding == "learned":
            x = x + self.model.embed_positions(positions)
        if images is not None:  # after the embedding scale, as transformers' masked_scatter of the features
            features = self.vision(images.pixel_values, images.target_sizes).astype(x.dtype)  # [N, hidden]
            taken = jnp.take(features, jnp.maximum(images.slots, 0), axis=0)
            x = jnp.where(images.slots[..., None] >= 0, taken, x)
        per_layer = self._per_layer_inputs(tokens, x) if cfg.per_layer_input_size else None
        keys, values = list(cache.keys), list(cache.values)
        conv, rec = list(cache.conv), list(cache.recurrent)
        for i, (layer, spec) in enumerate(zip(self.model.layers, cfg.layers)):
            if spec.linear is not None:
                x, conv[i], rec[i] = layer(x, None, conv[i], rec[i], cache.index, None, mask)
                continue
            rope = ropes.get(_rope_key(cfg, spec))
            pli = None if per_layer is None else per_layer[:, :, i]
            src = spec.attention.kv_source
            if src is not None:  # KV sharing (Gemma 4): read the source layer's cache, which keeps no copy here
                x, _, _ = layer(x, rope, keys[src], values[src], cache.index, masks[spec.attention.window],
                                per_layer_input=pli)
                continue
            x, keys[i], values[i] = layer(x, rope, keys[i], values[i], cache.index, masks[spec.attention.window],
                                          per_layer_input=pli)
        if logits_positions is not None:
            x = jnp.take_along_axis(x, logits_positions[:, None, None], axis=1)[:, 0]
        x = self.model.norm(x)
        if cfg.tie_word_embeddings:
            embedding = self.model.embed_tokens.embedding[...].astype(x.dtype)
            logits = jnp.einsum("...h,vh->...v", x, embedding, precision=self.precision)
        else:
            logits = self.lm_head(x)
        logits = logits.astype(jnp.float32)
        if cfg.final_logit_softcap is not None:
            cap = cfg.final_logit_softcap
            logits = jnp.tanh(logits / cap) * cap
        cache = cache.replace(keys=tuple(keys), values=tuple(values), conv=tuple(conv), recurrent=tuple(rec),
                              index=cache.index + t)
        return logits, cache

    def _per_layer_inputs(self, tokens: Array, x: Array) -> Array:
        """Gemma 4: ``(norm(proj(x) / sqrt(hidden)) + table[tokens] * sqrt(P)) / sqrt(2)`` as ``[B, T, layers, P]``,
        from ``tokens[B, T]`` and the scaled embeddings ``x[B, T, hidden]``."""
        cfg, m = self.config, self.model
        shape = (*tokens.shape, cfg.num_hidden_layers, cfg.per_layer_input_size)
        table = m.embed_tokens_per_layer(tokens)
        table = (table * jnp.asarray(cfg.per_layer_input_size ** 0.5, table.dtype)).reshape(shape)
        proj = m.per_layer_model_projection(x) * cfg.hidden_size ** -0.5
        proj = m.per_layer_projection_norm(proj.reshape(shape))
        return (proj + table) * 2.0 ** -0.5
