"""GPT-2: learned absolute positions (``wpe``), LayerNorm with biases, a plain GELU MLP, biases everywhere.

transformers' ``GPT2Config`` names (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``, ``n_inner``) are read as
written; the schema is the same in 4.x and 5.x.
"""

from __future__ import annotations

from jaxgen.config import (AttentionSpec, LayerSpec, ModelConfig, NormSpec, RopeConfig, _bool, _eos_ids,
                           _optional_int, _require, _token_id)
from jaxgen.families._common import activation, dtype_name, head_dim, positive, reject


def parse(raw: dict, source: str) -> ModelConfig:
    hidden = _require(raw, "n_embd", source)
    heads = _require(raw, "n_head", source)
    layers = _require(raw, "n_layer", source)
    reject(raw, "add_cross_attention", source, "an encoder-decoder GPT-2; jaxgen runs decoder-only models")
    eps = positive(raw, "layer_norm_epsilon", source, 1e-5)
    norm = NormSpec("layer", eps)
    scaled = _bool(raw, "scale_attn_weights", True, source)
    by_layer = _bool(raw, "scale_attn_by_inverse_layer_idx", False, source)
    dim = head_dim({}, hidden, heads, source)

    def layer(i: int) -> LayerSpec:
        scale = (dim ** -0.5 if scaled else 1.0) / (i + 1 if by_layer else 1)
        return LayerSpec(attention=AttentionSpec(rope=None, scale=scale, qkv_bias=True, o_bias=True), norm=norm,
                         mlp="plain", activation=activation(raw, "activation_function", "gelu_new", source),
                         mlp_bias=True)

    # reorder_and_upcast_attn only changes bfloat16/float16 rounding (scores in float32): jaxgen's already are.
    return ModelConfig(
        model_type="gpt2", vocab_size=_require(raw, "vocab_size", source), hidden_size=hidden,
        intermediate_size=_optional_int(raw, "n_inner", source, 4 * hidden), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=dim, rms_norm_eps=eps,
        max_position_embeddings=_optional_int(raw, "n_positions", source, 1024), rope=RopeConfig(),
        tie_word_embeddings=_bool(raw, "tie_word_embeddings", True, source), qkv_bias=True, o_bias=True,
        mlp_bias=True, hidden_act=raw.get("activation_function") or "gelu_new",
        bos_token_id=_token_id(raw, "bos_token_id", source), eos_token_id=_eos_ids(raw, source),
        pad_token_id=_token_id(raw, "pad_token_id", source), checkpoint_dtype=dtype_name(raw, source),
        layers=tuple(layer(i) for i in range(layers)), final_norm=norm, position_embedding="learned",
    )
