"""DeepSeek-V3 (``deepseek_v3``, transformers' ``DeepseekV3ForCausalLM``; R1 has the same architecture).

A pre-norm RMSNorm decoder whose attention is multi-head latent attention (:class:`~jaxgen.config.MLASpec`) and
whose MLP is dense for the first ``first_k_dense_replace`` layers and a mixture of experts after: sigmoid scores,
``e_score_correction_bias`` added for the choice only, top-k within the ``topk_group`` best of ``n_group`` groups
(a group's score: the sum of its two best experts), optional renormalisation, ``routed_scaling_factor``, plus
``n_shared_experts`` ungated shared experts (one MLP ``n_shared_experts * moe_intermediate_size`` wide).

RoPE covers the ``qk_rope_head_dim`` dimensions only (transformers sets ``head_dim = qk_rope_head_dim``); with YaRN
and ``mscale_all_dim`` the softmax scale is multiplied by ``yarn_get_mscale(factor, mscale_all_dim) ** 2``, as
transformers' ``yarn_apply_mscale`` does. Multi-token-prediction layers (``num_nextn_predict_layers``: released
checkpoints carry ``model.layers.{num_hidden_layers}.*``) are not part of the causal LM; conversion skips them.
"""

from __future__ import annotations

import dataclasses
import math

from jaxgen.config import (AttentionSpec, MLASpec, ModelConfig, MoESpec, NormSpec, _bool, _optional_int,
                           _parse, _require)
from jaxgen.errors import ConfigError
from jaxgen.families._common import positive, reject


def _mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def parse(raw: dict, source: str) -> ModelConfig:
    heads = _require(raw, "num_attention_heads", source)
    kv_heads = raw.get("num_key_value_heads")
    if kv_heads not in (None, heads):  # kv_b_proj makes one key/value per query head: transformers would fail too
        raise ConfigError(f"{source}: num_key_value_heads={kv_heads!r} must equal num_attention_heads={heads} for "
                          "deepseek_v3 (latent attention expands keys and values per query head).")
    # DeepSeek's remote-code configs name the routing; only V3's (what transformers implements) runs here.
    reject(raw, "topk_method", source, "only DeepSeek-V3's 'noaux_tc' routing is implemented", (None, "noaux_tc"))
    reject(raw, "scoring_func", source, "only DeepSeek-V3's 'sigmoid' scores are implemented", (None, "sigmoid"))
    rope_dim = _require(raw, "qk_rope_head_dim", source)
    if rope_dim % 2:
        raise ConfigError(f"{source}: qk_rope_head_dim={rope_dim} must be even for rotary embeddings.")
    # Routing knobs and q_lora_rank fall back to transformers' DeepseekV3Config defaults (V3's own values), so a
    # config.json without them means what it means to transformers.
    q_lora = _optional_int(raw, "q_lora_rank", source) if "q_lora_rank" in raw else 1536
    mla = MLASpec(q_lora_rank=q_lora, kv_lora_rank=_require(raw, "kv_lora_rank", source),
                  qk_nope_head_dim=_require(raw, "qk_nope_head_dim", source), qk_rope_head_dim=rope_dim,
                  v_head_dim=_require(raw, "v_head_dim", source),
                  interleave=_bool(raw, "rope_interleave", True, source))
    # The Llama-line parser reads vocabulary, norms, RoPE (head_dim = the rotary part), ids; Llama's defaults.
    base = _parse(dict(raw, model_type="llama", num_key_value_heads=heads, head_dim=rope_dim,
                       mlp_bias=False), source)
    rope = base.rope
    scale = (mla.qk_nope_head_dim + rope_dim) ** -0.5
    if rope.rope_type != "default" and rope.mscale_all_dim:
        scale *= _mscale(rope.factor, rope.mscale_all_dim) ** 2
    bias = _bool(raw, "attention_bias", False, source)
    norm = NormSpec("rms", base.rms_norm_eps)
    attention = AttentionSpec(rope=rope, scale=scale, qkv_bias=bias, o_bias=bias, mla=mla)

    experts = _require(raw, "n_routed_experts", source)
    top_k = _require(raw, "num_experts_per_tok", source)
    n_group = _optional_int(raw, "n_group", source, 8)
    topk_group = _optional_int(raw, "topk_group", source, 4)
    if experts % n_group or not topk_group <= n_group or experts // n_group < 2:
        raise ConfigError(f"{source}: n_routed_experts={experts} must split into n_group={n_group} groups of at "
                          f"least 2 experts, and topk_group={topk_group} must be at most n_group.")
    if not 0 < top_k <= topk_group * (experts // n_group):
        raise ConfigError(f"{source}: num_experts_per_tok={top_k} must be between 1 and the experts of the "
                          f"topk_group={topk_group} chosen groups ({topk_group * (experts // n_group)}).")
    moe_inter = _require(raw, "moe_intermediate_size", source)
    moe = MoESpec(experts, top_k, moe_inter, norm_topk_prob=_bool(raw, "norm_topk_prob", True, source),
                  shared_intermediate_size=moe_inter * _optional_int(raw, "n_shared_experts", source, 1, minimum=0),
                  scoring="sigmoid", n_group=n_group, topk_group=topk_group,
                  routed_scaling_factor=positive(raw, "routed_scaling_factor", source, 2.5), shared_gate=False)
    dense = _optional_int(raw, "first_k_dense_replace", source, 3, minimum=0)
    # From the Llama-line specs (activation, MLP kind), with latent attention and, past the dense layers, MoE.
    layers = tuple(dataclasses.replace(spec, attention=attention, norm=norm,
                                       **({} if i < dense else dict(mlp="moe", moe=moe)))
                   for i, spec in enumerate(base.layers))
    return dataclasses.replace(base, model_type="deepseek_v3", layers=layers, final_norm=norm, qkv_bias=bias,
                               o_bias=bias,
                               mtp_layers=_optional_int(raw, "num_nextn_predict_layers", source, 1, minimum=0))
