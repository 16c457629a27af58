"""Every jaxgen parameter's dotted name and shape, computed from a :class:`ModelConfig` alone.

This mirrors ``jaxgen.nn`` (``CausalLM`` built from ``config.layers``) so that conversion can check a checkpoint
without importing jax or flax; ``tests/test_convert_shapes.py`` holds it equal to ``jaxgen.model.param_shapes`` for
every variant. One function serves every family because the model is one decoder read from per-layer specs.
"""

from __future__ import annotations

from typing import Callable

from jaxgen.config import SUPPORTED_MODEL_TYPES, ModelConfig, NormSpec, VisionConfig

Shapes = dict[str, tuple[int, ...]]


def _norm(out: Shapes, name: str, spec: NormSpec, size: int) -> None:
    out[f"{name}.weight"] = (size,)
    if spec.kind == "layer":  # LayerNorm has a bias; the RMS norms do not
        out[f"{name}.bias"] = (size,)


def _linear_attention(out: Shapes, prefix: str, s, h: int) -> list[tuple[str, int, int, bool]]:
    """jaxgen.nn.linear_attention.GatedDeltaNet's non-linear parameters (into ``out``) and its linears."""
    p, value_dim = f"{prefix}.linear_attn", s.num_v_heads * s.v_head_dim
    out.update({f"{p}.conv1d.weight": (s.conv_dim, 1, s.conv_kernel), f"{p}.dt_bias": (s.num_v_heads,),
                f"{p}.A_log": (s.num_v_heads,), f"{p}.norm.weight": (s.v_head_dim,)})
    return [("linear_attn.in_proj_qkv", h, s.conv_dim, False), ("linear_attn.in_proj_z", h, value_dim, False),
            ("linear_attn.in_proj_b", h, s.num_v_heads, False), ("linear_attn.in_proj_a", h, s.num_v_heads, False),
            ("linear_attn.out_proj", value_dim, h, False)]


def _latent_attention(out: Shapes, prefix: str, a, heads: int, h: int) -> list[tuple[str, int, int, bool]]:
    """jaxgen.nn.mla.MLA's two latent norms (into ``out``) and its linears."""
    m, p = a.mla, f"{prefix}.self_attn"
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    out[f"{p}.kv_a_layernorm.weight"] = (m.kv_lora_rank,)
    if m.q_lora_rank is None:
        linears = [("self_attn.q_proj", h, heads * qk, False)]
    else:
        out[f"{p}.q_a_layernorm.weight"] = (m.q_lora_rank,)
        linears = [("self_attn.q_a_proj", h, m.q_lora_rank, a.qkv_bias),
                   ("self_attn.q_b_proj", m.q_lora_rank, heads * qk, False)]
    return linears + [("self_attn.kv_a_proj_with_mqa", h, m.kv_lora_rank + m.qk_rope_head_dim, a.qkv_bias),
                      ("self_attn.kv_b_proj", m.kv_lora_rank, heads * (m.qk_nope_head_dim + m.v_head_dim), False),
                      ("self_attn.o_proj", heads * m.v_head_dim, h, a.o_bias)]


def decoder_shapes(c: ModelConfig) -> Shapes:
    """The decoder of ``c.layers``: biases, q/k norms, four norms (sandwich residual), a gate projection (gated MLP)
    and learned positions only where the specs say so.

    Linear kernels are ``[in, out]`` (flax), embeddings ``[rows, hidden]``; a tied model has no ``lm_head``.
    """
    h = c.hidden_size
    out: Shapes = {"model.embed_tokens.embedding": (c.vocab_size, h)}
    if c.position_embedding == "learned":
        out["model.embed_positions.embedding"] = (c.max_position_embeddings, h)
    p = c.per_layer_input_size
    if p:  # Gemma 4 per-layer inputs
        out["model.embed_tokens_per_layer.embedding"] = (c.per_layer_vocab_size, c.num_hidden_layers * p)
        out["model.per_layer_model_projection.kernel"] = (h, c.num_hidden_layers * p)
        _norm(out, "model.per_layer_projection_norm", c.final_norm, p)
    for layer, spec in enumerate(c.layers):
        prefix, a = f"model.layers.{layer}", spec.attention
        i = spec.intermediate_size or c.intermediate_size
        d = c.layer_head_dim(layer)
        q_size, kv_size = c.num_attention_heads * d, c.layer_kv_heads(layer) * d
        if p:
            out[f"{prefix}.per_layer_input_gate.kernel"] = (h, p)
            out[f"{prefix}.per_layer_projection.kernel"] = (p, h)
            _norm(out, f"{prefix}.post_per_layer_input_norm", spec.norm, h)
        if spec.layer_scalar:
            out[f"{prefix}.layer_scalar"] = (1,)
        norms = ["input_layernorm", "post_attention_layernorm"]
        if spec.residual == "sandwich":
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for name in norms:
            _norm(out, f"{prefix}.{name}", spec.norm, h)
        q_out = q_size * (2 if a.output_gate else 1)  # Qwen3.5's q_proj: [q | gate] per head
        linears = [("self_attn.q_proj", h, q_out, a.qkv_bias), ("self_attn.k_proj", h, kv_size, a.qkv_bias),
                   ("self_attn.v_proj", h, kv_size, a.qkv_bias), ("self_attn.o_proj", q_size, h, a.o_bias)]
        if a.kv_source is not None or a.k_eq_v:  # Gemma 4: KV sharing has no k/v weights; k_eq_v has no v_proj
            linears = [lin for lin in linears if lin[0] != "self_attn.v_proj"
                       and (a.kv_source is None or lin[0] != "self_attn.k_proj")]
        if spec.linear is not None:  # a Gated DeltaNet layer replaces self-attention
            linears = _linear_attention(out, prefix, spec.linear, h)
        if a.mla is not None:  # DeepSeek-V3 latent attention replaces q/k/v (jaxgen.nn.mla)
            linears = _latent_attention(out, prefix, a, c.num_attention_heads, h)
        if spec.moe is not None:  # jaxgen.nn.moe: stacked experts [E, in, out], router, optional shared expert
            m = spec.moe
            e, mi = m.num_experts, m.intermediate_size
            # Gemma 4's routed experts sit beside its dense MLP, in `moe`; the others replace the MLP
            mod = "moe" if spec.mlp == "dense+moe" else "mlp"
            x = f"{prefix}.{mod}.experts"
            out.update({f"{x}.gate_proj": (e, h, mi), f"{x}.up_proj": (e, h, mi), f"{x}.down_proj": (e, mi, h)})
            linears.append((f"{mod}.gate", h, e, m.router_bias))
            if m.scoring == "gemma4":
                out.update({f"{prefix}.moe.router_scale": (h,), f"{prefix}.moe.per_expert_scale": (e,)})
                for name in ("post_feedforward_layernorm_1", "pre_feedforward_layernorm_2",
                             "post_feedforward_layernorm_2"):
                    _norm(out, f"{prefix}.{name}", spec.norm, h)
            if m.expert_bias:  # gpt-oss
                out.update({f"{x}.gate_proj_bias": (e, mi), f"{x}.up_proj_bias": (e, mi), f"{x}.down_proj_bias": (e, h)})
            if m.scoring == "sigmoid":  # DeepSeek-V3's routing bias
                out[f"{prefix}.mlp.gate.e_score_correction_bias"] = (e,)
            if m.shared_intermediate_size:
                si, name = m.shared_intermediate_size, "shared_expert" if m.shared_gate else "shared_experts"
                linears += [(f"mlp.{name}.gate_proj", h, si, False), (f"mlp.{name}.up_proj", h, si, False),
                            (f"mlp.{name}.down_proj", si, h, False)]
                if m.shared_gate:
                    linears.append(("mlp.shared_expert_gate", h, 1, False))
        if spec.moe is None or spec.mlp == "dense+moe":
            if spec.mlp != "plain":
                linears.append(("mlp.gate_proj", h, i, spec.mlp_bias))
            linears += [("mlp.up_proj", h, i, spec.mlp_bias), ("mlp.down_proj", i, h, spec.mlp_bias)]
        for name, n_in, n_out, bias in linears:
            out[f"{prefix}.{name}.kernel"] = (n_in, n_out)
            if bias:
                out[f"{prefix}.{name}.bias"] = (n_out,)
        if a.sinks:  # gpt-oss: one logit per head
            out[f"{prefix}.self_attn.sinks"] = (c.num_attention_heads,)
        if a.qk_norm:  # one norm per head dimension, shared by all heads
            _norm(out, f"{prefix}.self_attn.q_norm", spec.norm, d)
            if a.kv_source is None:
                _norm(out, f"{prefix}.self_attn.k_norm", spec.norm, d)
    _norm(out, "model.norm", c.final_norm, h)
    if not c.tie_word_embeddings:
        out["lm_head.kernel"] = (h, c.vocab_size)
    return out


FAMILIES: dict[str, Callable[[ModelConfig], Shapes]] = {t: decoder_shapes for t in SUPPORTED_MODEL_TYPES}


def _layer_norm(out: Shapes, name: str, size: int) -> None:
    out[f"{name}.weight"] = (size,)
    out[f"{name}.bias"] = (size,)


def _dense(out: Shapes, name: str, n_in: int, n_out: int) -> None:
    out[f"{name}.kernel"] = (n_in, n_out)
    out[f"{name}.bias"] = (n_out,)


def vision_encoder_layer_shapes(out: Shapes, prefix: str, v: VisionConfig) -> None:
    """jaxgen.nn.vision.VisionEncoderLayer's parameters under ``prefix``."""
    d = v.hidden_size
    _layer_norm(out, f"{prefix}.layer_norm1", d)
    _layer_norm(out, f"{prefix}.layer_norm2", d)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _dense(out, f"{prefix}.self_attn.{name}", d, d)
    _dense(out, f"{prefix}.mlp.fc1", d, v.intermediate_size)
    _dense(out, f"{prefix}.mlp.fc2", v.intermediate_size, d)


def vision_embeddings_shapes(out: Shapes, prefix: str, v: VisionConfig) -> None:
    """jaxgen.nn.vision.VisionEmbeddings' parameters under ``prefix``."""
    _dense(out, f"{prefix}.patch_embedding", v.num_channels * v.patch_size ** 2, v.hidden_size)
    out[f"{prefix}.position_embedding.embedding"] = (v.patches_per_side ** 2, v.hidden_size)


def gemma3_vision_shapes(v: VisionConfig) -> Shapes:
    """jaxgen.nn.gemma3_vision.Gemma3ImageEncoder's parameters (below ``vision.``)."""
    out: Shapes = {}
    m = "vision_tower"
    vision_embeddings_shapes(out, f"{m}.embeddings", v)
    for i in range(v.num_hidden_layers):
        vision_encoder_layer_shapes(out, f"{m}.encoder.layers.{i}", v)
    _layer_norm(out, f"{m}.post_layernorm", v.hidden_size)
    out["multi_modal_projector.mm_input_projection_weight"] = (v.hidden_size, v.text_hidden_size)
    out["multi_modal_projector.mm_soft_emb_norm.weight"] = (v.hidden_size,)
    return out


def minicpmv_vision_shapes(v: VisionConfig) -> Shapes:
    """jaxgen.nn.minicpmv.MiniCPMVImageEncoder's parameters (below ``vision.``): the tower with its 2x2 window
    merger, then ``merger_times`` downsampling MLPs (the last one projects to the language model's width)."""
    out: Shapes = {}
    d, i = v.hidden_size, v.intermediate_size
    k = v.window_kernel_size[0] * v.window_kernel_size[1]
    t = "vision_tower"
    vision_embeddings_shapes(out, f"{t}.embeddings", v)
    for layer in range(v.num_hidden_layers):
        vision_encoder_layer_shapes(out, f"{t}.encoder.layers.{layer}", v)
    _layer_norm(out, f"{t}.post_layernorm", d)
    m = f"{t}.vit_merger"
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _dense(out, f"{m}.self_attn.{name}", d, d)
    _layer_norm(out, f"{m}.layer_norm1", d)
    _layer_norm(out, f"{m}.pre_norm", d * k)
    _dense(out, f"{m}.linear_1", d * k, i * k)
    _dense(out, f"{m}.linear_2", i * k, d)
    for step in range(v.merger_times):
        width = d if step < v.merger_times - 1 else v.text_hidden_size
        _layer_norm(out, f"merger.mlp.{step}.pre_norm", 4 * d)
        _dense(out, f"merger.mlp.{step}.linear_1", 4 * d, 4 * d)
        _dense(out, f"merger.mlp.{step}.linear_2", 4 * d, width)
    return out


def vision_shapes(v: VisionConfig) -> Shapes:
    """The image encoder's parameters, below ``vision.``."""
    return gemma3_vision_shapes(v) if v.kind == "gemma3" else minicpmv_vision_shapes(v)


def param_shapes(config: ModelConfig) -> Shapes:
    """``{dotted jaxgen name: shape}`` of every parameter the model built from ``config`` has."""
    out = FAMILIES[config.model_type](config)
    if config.vision is not None:
        out.update({f"vision.{k}": s for k, s in vision_shapes(config.vision).items()})
    return out
