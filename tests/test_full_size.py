"""Real-size configs, abstractly: jaxgen's parameter count equals transformers' (its model built on the meta device,
so nothing is allocated on either side) and one step traces with ``jax.eval_shape``. The mixtures of experts and
hybrids here, and the largest GPT-2, Gemma 2 / 3 and Phi-3 (the Llama line: tests/test_model_parity.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from checkpoints_convert import shapes  # noqa: E402
from jaxgen.cache import init_cache  # noqa: E402
from jaxgen.config import ModelConfig  # noqa: E402
from jaxgen.model import abstract_model, make_step  # noqa: E402

# The config.json fields that set the sizes, as published on the Hub.
GPT_OSS_20B = dict(
    model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
    num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4, vocab_size=201088,
    sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 12, attention_bias=True,
    max_position_embeddings=131072, rms_norm_eps=1e-5, swiglu_limit=7.0, tie_word_embeddings=False,
    rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                      original_max_position_embeddings=4096), rope_theta=150000,
    quantization_config=dict(quant_method="mxfp4"))
FULL_SIZE = {
    "GPT-2-XL": ("GPT2LMHeadModel", dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25, vocab_size=50257,
                                          n_positions=1024)),
    "Gemma-2-27B": ("Gemma2ForCausalLM", dict(
        model_type="gemma2", hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
        num_attention_heads=32, num_key_value_heads=16, head_dim=128, vocab_size=256000,
        query_pre_attn_scalar=144, sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
        max_position_embeddings=8192)),
    "Gemma-3-27B": ("Gemma3ForCausalLM", dict(
        model_type="gemma3_text", hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
        num_attention_heads=32, num_key_value_heads=16, head_dim=128, vocab_size=262208,
        query_pre_attn_scalar=168, sliding_window=1024, rope_theta=1e6, rope_local_base_freq=10000.0,
        rope_scaling=dict(rope_type="linear", factor=8.0), max_position_embeddings=131072)),
    "Phi-3-medium": ("Phi3ForCausalLM", dict(
        model_type="phi3", hidden_size=5120, intermediate_size=17920, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=10, vocab_size=32064, max_position_embeddings=4096, original_max_position_embeddings=4096,
        rope_theta=10000.0, tie_word_embeddings=False)),
    "Mixtral-8x7B": ("MixtralForCausalLM", dict(
        model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
        max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "Qwen3-30B-A3B": ("Qwen3MoeForCausalLM", dict(
        model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], vocab_size=151936,
        max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)),
    "Qwen3-235B-A22B": ("Qwen3MoeForCausalLM", dict(
        model_type="qwen3_moe", hidden_size=4096, intermediate_size=12288, moe_intermediate_size=1536,
        num_hidden_layers=94, num_attention_heads=64, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], vocab_size=151936,
        max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)),
    "gpt-oss-20b": ("GptOssForCausalLM", GPT_OSS_20B),
    "gpt-oss-120b": ("GptOssForCausalLM", {**GPT_OSS_20B, "num_hidden_layers": 36, "num_local_experts": 128,
                                            "layer_types": ["sliding_attention", "full_attention"] * 18}),
    "DeepSeek-V3": ("DeepseekV3ForCausalLM", dict(
        model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
        n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        v_head_dim=128, qk_nope_head_dim=128, topk_method="noaux_tc", n_group=8, topk_group=4,
        num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True, scoring_func="sigmoid",
        vocab_size=129280, max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
        num_nextn_predict_layers=1, rope_theta=10000.0,
        rope_scaling=dict(type="yarn", factor=40, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0,
                          original_max_position_embeddings=4096))),
    # Gemma 4's MoE model at the 26B-A4B sizes (every layer: a dense MLP beside 128 experts, top-8; k_eq_v global
    # layers with 2 KV heads of 512; no per-layer inputs). The count is checked against transformers' own model.
    "Gemma-4-26B-A4B-shaped": ("Gemma4ForCausalLM", dict(
        model_type="gemma4_text", hidden_size=2816, intermediate_size=2112, moe_intermediate_size=704,
        enable_moe_block=True, num_experts=128, top_k_experts=8, num_hidden_layers=30, num_attention_heads=16,
        num_key_value_heads=8, num_global_key_value_heads=2, head_dim=256, global_head_dim=512,
        attention_k_eq_v=True, hidden_size_per_layer_input=0, vocab_size=262144, sliding_window=1024,
        final_logit_softcapping=30.0, max_position_embeddings=262144, tie_word_embeddings=True)),
    # Hybrid linear attention with experts: Qwen3-Next-80B-A3B, and Qwen3.5-MoE at its config class's default
    # sizes (written out: a saved config.json always carries them).
    "Qwen3-Next-80B-A3B": ("Qwen3NextForCausalLM", dict(
        model_type="qwen3_next", hidden_size=2048, intermediate_size=5120, num_hidden_layers=48,
        num_attention_heads=16, num_key_value_heads=2, head_dim=256, num_experts=512, num_experts_per_tok=10,
        moe_intermediate_size=512, shared_expert_intermediate_size=512, norm_topk_prob=True, decoder_sparse_step=1,
        linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, vocab_size=151936, max_position_embeddings=262144, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_theta=10000000, partial_rotary_factor=0.25,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 12)),
    "Qwen3.5-default": ("Qwen3_5ForCausalLM", dict(
        model_type="qwen3_5_text", hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
        num_attention_heads=16, num_key_value_heads=4, head_dim=256, vocab_size=248320, linear_num_key_heads=16,
        linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128, tie_word_embeddings=False,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 8)),
    "Qwen3.5-MoE-default": ("Qwen3_5MoeForCausalLM", dict(
        model_type="qwen3_5_moe_text", hidden_size=2048, num_hidden_layers=40, num_attention_heads=16,
        num_key_value_heads=2, head_dim=256, vocab_size=248320, num_experts=256, num_experts_per_tok=8,
        moe_intermediate_size=512, shared_expert_intermediate_size=512, linear_num_key_heads=16,
        linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128, tie_word_embeddings=False,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 10)),
}


def hf_counts(cls: str, raw: dict) -> tuple[int, int]:
    """(parameters, saved float buffers: DeepSeek's routing biases, Gemma 4's layer scalars) of transformers'
    model of ``raw``."""
    raw = {k: v for k, v in raw.items() if k != "quantization_config"}  # transformers would load the MXFP4 kernels
    config = transformers.AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = getattr(transformers, cls)(config)
    buffers = sum(b.numel() for name, b in model.named_buffers()
                  if name.endswith(("e_score_correction_bias", "layer_scalar")))  # saved buffers that are weights
    return model.num_parameters(), buffers


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_full_size_counts_and_traces(name):
    """The count over every layer (the flax-free shape table, held equal to the NNX model elsewhere); the trace on
    the first layers only (every later layer repeats one of their shapes), which keeps the test quick."""
    cls, raw = FULL_SIZE[name]
    config = ModelConfig.from_hf_dict(raw)
    params_hf, buffers = hf_counts(cls, raw)
    total = sum(int(np.prod(s)) for s in shapes.param_shapes(config).values())
    print(f"{name}: {total / 1e9:.2f} B parameters ({buffers} routing-bias entries)")
    assert total == config.num_params() == params_hf + buffers

    # gpt-oss: one sliding and one full layer; the hybrids: three linear-attention layers and one full one
    first_layers = max(raw.get("first_k_dense_replace", 0) + 1, 4 if "linear_attention" in raw.get("layer_types", ())
                       else 2)
    cut = {"n_layer" if "n_layer" in raw else "num_hidden_layers": first_layers}
    if "layer_types" in raw:
        cut["layer_types"] = raw["layer_types"][:first_layers]
    first = ModelConfig.from_hf_dict({**raw, **cut})
    graphdef, params = nnx.split(abstract_model(first, jnp.bfloat16))
    assert {n: tuple(x.shape) for n, x in _flat(params).items()} == shapes.param_shapes(first)
    batch, capacity = 1, 32
    cache = jax.eval_shape(lambda: init_cache(first, batch, capacity, jnp.bfloat16))
    tokens = jax.ShapeDtypeStruct((batch, 8), jnp.int32)
    logits, new_cache = jax.eval_shape(make_step(graphdef), params, tokens, tokens, cache, tokens)
    assert logits.shape == (batch, 8, config.vocab_size)
    assert jax.tree.structure(new_cache) == jax.tree.structure(cache)
    if config.model_type == "deepseek_v3":  # the latent cache: kv_lora_rank + qk_rope_head_dim per token and layer
        full = jax.eval_shape(lambda: init_cache(config, batch, capacity, jnp.bfloat16))
        assert {(k.shape[1], k.shape[-1], v.shape[-1]) for k, v in zip(full.keys, full.values)} == {(1, 512, 64)}


def _flat(params) -> dict:
    return {".".join(str(k) for k in path): leaf for path, leaf in nnx.to_flat_state(params)}
