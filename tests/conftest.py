"""Shared fixtures: tiny random transformers models saved with ``save_pretrained`` into temp folders."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# In-process CLI calls must not write programs into the user's cache; test_cli checks the cache on its own.
os.environ.setdefault("JAXGEN_COMPILATION_CACHE", "off")

import atexit
import contextlib
import functools
import shutil
import tempfile

import numpy as np
import jax.monitoring
import pytest
import torch
import transformers

import jaxgen
from hf_random import randomize_vectors
from jaxgen.api.inputs import left_pad  # noqa: F401  (shared by the test files)

torch.set_num_threads(2)

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, initializer_range=0.3, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (config class, model class, config overrides). Covers every family and variant of the foundation.
VARIANTS = {
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama_mha": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4)),
    "llama_mqa_tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "llama_linear_rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_scaling=dict(rope_type="linear", factor=2.0))),
    "llama_yarn_rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_scaling=dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=64))),
    "llama_dynamic_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_scaling=dict(rope_type="dynamic", factor=2.0), max_position_embeddings=12)),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4)),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen2_window": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=4,
                                                             max_window_layers=1)),
    "qwen3_qknorm": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
    # Families beyond the Llama line (tests/test_families.py has their focused checks). GPT-2: learned positions,
    # LayerNorm, fused c_attn split at conversion, tied head.
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_inner=128)),
    # Gemma: (1 + w) norms, GeGLU, sqrt(hidden) embedding scale, head_dim given (its default is 256).
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=32)),
    # Gemma 2: four norms per layer, query_pre_attn_scalar, soft caps small enough to bend these logits, a window.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                                                         attn_logit_softcapping=5.0, final_logit_softcapping=8.0)),
    # Gemma 3: q/k norms, local and global RoPE bases, linear scaling on global layers only, sliding pattern.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, num_hidden_layers=3, sliding_window=4, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters=dict(sliding_attention=dict(rope_type="default", rope_theta=100.0),
                             full_attention=dict(rope_type="linear", factor=4.0, rope_theta=10000.0)))),
    # Phi-3: fused qkv_proj / gate_up_proj split at conversion, a window on every layer (as Phi-3-mini-4k).
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=4)),
    # Phi-4-mini's layout: half the head dimensions rotate, LongRoPE (short factors below 32 positions), tied head.
    "phi3_partial_longrope": ("Phi3Config", "Phi3ForCausalLM", dict(
        tie_word_embeddings=True, original_max_position_embeddings=32,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                             short_factor=[1.0, 1.5, 2.0, 3.0], long_factor=[2.0, 4.0, 8.0, 16.0]))),
}
FAMILIES = ["llama_gqa", "mistral_window", "qwen2_bias", "qwen3_qknorm"]
# Built by hf_checkpoint like VARIANTS, but not among the `variant` fixture's params. A vocabulary of 2048 (above
# 4 x 64) is large enough for sampling's top-k candidate path (jaxgen.decode.processors.candidate_count) and for
# the per-row CPU top-k (jaxgen.decode.topk, rows of more than 256 entries), which a vocabulary of 128 never takes.
BIG_VOCAB = "llama_vocab2048"
EXTRA_CHECKPOINTS = {BIG_VOCAB: ("LlamaConfig", "LlamaForCausalLM", dict(vocab_size=2048))}

_ROOT = tempfile.mkdtemp(prefix="jaxgen-tests-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def hf_checkpoint(variant: str, seed: int = 0, dtype: str = "float32") -> tuple[str, object]:
    """Build (once per session) a tiny random HF model; returns (folder, torch model in eval mode)."""
    cfg_cls, model_cls, overrides = {**VARIANTS, **EXTRA_CHECKPOINTS}[variant]
    config = getattr(transformers, cfg_cls)(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    folder = tempfile.mkdtemp(prefix=f"{variant}-{seed}-", dir=_ROOT)
    model.save_pretrained(folder)
    return folder, model


@functools.lru_cache(maxsize=None)
def models(variant: str = "llama_gqa") -> tuple[jaxgen.Model, object]:
    """(jaxgen float32 model, transformers model) of ``hf_checkpoint(variant)``, loaded once per session."""
    folder, hf = hf_checkpoint(variant)
    return jaxgen.load_model(folder, dtype="float32"), hf


def hf_processors(hf, mask: np.ndarray, prompt_len: int, pad_token_id: int = 0, eos_token_id=2,
                  **kw) -> transformers.LogitsProcessorList:
    """transformers' own processor list for a sampling config, as its ``generate`` builds it."""
    gc = transformers.GenerationConfig(do_sample=True, pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kw)
    hf._prepare_special_tokens(gc, True, device="cpu")
    return hf._get_logits_processor(gc, input_ids_seq_length=prompt_len, device="cpu",
                                    model_kwargs={"attention_mask": torch.tensor(mask, dtype=torch.long)})


def teacher_forced_scores(hf, out, ids: np.ndarray, mask: np.ndarray, max_new: int, **kw) -> np.ndarray:
    """Feed the sequences jaxgen generated in ``out`` from the left-padded prompts ``ids``/``mask`` to transformers:
    ``float32[rows, max_new, V]``, the log-softmax of its processed scores for the sampling config ``kw`` at each
    step (-inf where a filter removed a token; NaN after a row's end)."""
    seq = torch.tensor(np.asarray(out.sequences), dtype=torch.long)
    rows, t = ids.shape
    full_mask = torch.cat([torch.tensor(mask, dtype=torch.long), torch.ones((rows, max_new), dtype=torch.long)], 1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
    with torch.no_grad():
        logits = hf(input_ids=seq, attention_mask=full_mask, position_ids=positions).logits.float()
    procs = hf_processors(hf, mask, t, **kw)
    result = np.full((rows, max_new, logits.shape[-1]), np.nan, np.float32)
    n = np.asarray(out.num_generated)
    for s in range(int(n.max())):
        lp = torch.log_softmax(procs(seq[:, :t + s], logits[:, t + s - 1].clone()), -1).numpy()
        result[:, s] = np.where((s < n)[:, None], lp, np.nan)
    return result


def teacher_forced_logprobs(hf, out, ids: np.ndarray, mask: np.ndarray, max_new: int, **kw) -> np.ndarray:
    """transformers' processed log-prob of each token jaxgen generated (:func:`teacher_forced_scores` at the
    chosen tokens): ``float32[rows, max_new]``, NaN after a row's end."""
    full = teacher_forced_scores(hf, out, ids, mask, max_new, **kw)
    chosen = np.asarray(out.sequences)[:, ids.shape[1]:ids.shape[1] + max_new]
    return np.take_along_axis(full, chosen[..., None], axis=-1)[..., 0]


def randomize_vectors_and_save(model, prefix: str) -> str:
    """:func:`hf_random.randomize_vectors` in place, then save with ``save_pretrained``; returns the folder."""
    randomize_vectors(model)
    folder = tempfile.mkdtemp(prefix=f"{prefix}-", dir=_ROOT)
    model.save_pretrained(folder)
    return folder


# --- the family matrix: one tiny random checkpoint per family for the per-family checks every family must pass
# (tests/test_family_matrix.py: beam preset, raw/processed top-k logprobs, crosscheck, a (2, 4) mesh). A family
# added to jaxgen adds one entry here: name -> (config class, model class, overrides on BASE).
MOE_VARIANTS = {
    # top-2 of 8, always renormalised; intermediate_size is each expert's width.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=8, num_experts_per_tok=2,
                                                             intermediate_size=32)),
    # shared expert with its sigmoid gate; top-k not renormalised; qkv biases.
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        norm_topk_prob=False)),
    # dense layer 1 (mlp_only_layers) between sparse ones, q/k norms, renormalised top-3 of 8.
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        num_hidden_layers=3, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, norm_topk_prob=True,
        mlp_only_layers=[1], head_dim=16)),
}
# Qwen3.5 text: 3 Gated DeltaNet layers + 1 gated full-attention layer.
QWEN35 = dict(num_hidden_layers=4, head_dim=16, tie_word_embeddings=False,
              layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
              linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16,
              linear_conv_kernel_dim=4)
# Qwen3.5-MoE: the same layers, every MLP top-2 of 4 experts plus a gated shared expert. Qwen3-Next: Gated DeltaNet
# inputs fused per key head (2 value heads per key head), layer 1 dense (mlp_only_layers), top-2 not renormalised.
QWEN35_EXPERTS = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48)
QWEN3_NEXT_EXPERTS = dict(QWEN35_EXPERTS, mlp_only_layers=[1], norm_topk_prob=False)
QWEN35_MOE = dict(QWEN35, **QWEN35_EXPERTS)
QWEN3_NEXT = dict(QWEN35, **QWEN3_NEXT_EXPERTS)
# 5 layers: sliding, global, sliding, then two KV-sharing layers (3 reads layer 2, 4 reads layer 1); global layers
# with their own head_dim / KV heads, k_eq_v and proportional RoPE; per-layer inputs; a double-wide MLP where
# KV is shared; a window and a final soft-cap small enough to matter.
GEMMA4 = dict(num_hidden_layers=5, head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
              attention_k_eq_v=True, num_kv_shared_layers=2, use_double_wide_mlp=True,
              layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                           "full_attention"],
              hidden_size_per_layer_input=8, vocab_size_per_layer_input=128, sliding_window=4,
              final_logit_softcapping=8.0,
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.5,
                                                  "rope_theta": 10000.0}})
# Gemma 4 with its MoE block (every layer: the dense MLP plus top-2 of 4 routed experts, each branch with its norms).
GEMMA4_MOE = dict(GEMMA4, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32)
# DeepSeek-V3: latent attention with a low-rank q and interleaved rotary pairs; layer 0 dense, then 8 experts in 4
# groups (the best 2 groups, top-2 inside), a shared expert, a routing bias (randomised with the norms).
DEEPSEEK_V3 = dict(num_hidden_layers=3, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8,
                   qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
                   topk_group=2, n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1,
                   routed_scaling_factor=1.5)
# gpt-oss: sliding (window 4) and full layers, sinks, top-2 of 4 experts with biases; a SwiGLU limit of 1.5, small
# enough that the clamps bind on these random weights; YaRN as the released configs (truncate false).
GPT_OSS = dict(num_hidden_layers=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
               sliding_window=4, layer_types=["sliding_attention", "full_attention"], swiglu_limit=1.5,
               rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                "truncate": False, "original_max_position_embeddings": 64, "rope_theta": 150000.0})
MATRIX = {
    **{name: VARIANTS[name] for name in ("llama_gqa", "mistral_window", "qwen2_bias", "qwen3_qknorm", "gpt2",
                                         "gemma", "gemma2", "gemma3", "phi3", "phi3_partial_longrope")},
    **MOE_VARIANTS,
    "qwen3_5": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", QWEN35),
    # --- entries for families added later go below this line, one per family ---
    "gemma4": ("Gemma4TextConfig", "Gemma4ForCausalLM", GEMMA4),
    "gemma4_moe": ("Gemma4TextConfig", "Gemma4ForCausalLM", GEMMA4_MOE),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM", QWEN35_MOE),
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", QWEN3_NEXT),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", DEEPSEEK_V3),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", GPT_OSS),
}


def assert_generate_matches_transformers(model, ref, ids: np.ndarray, mask: np.ndarray, num_beams: int,
                                         min_distinct: int = 0) -> None:
    """Greedy (``num_beams=1``) or beam search with repetition penalty 1.2, 8 new tokens: jaxgen's tokens equal
    transformers' ``generate``, and beam scores agree to 1e-4. ``min_distinct``: the reference's first row must
    hold that many distinct new tokens (so the comparison is not of one repeated token)."""
    kw = dict(max_new_tokens=8, num_beams=num_beams, repetition_penalty=1.2, pad_token_id=3, eos_token_id=37)
    out = jaxgen.generate(model, ids, mask, **kw)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                            do_sample=False, output_scores=True, return_dict_in_generate=True, **kw)
    assert len(set(want.sequences[0, ids.shape[1]:].tolist())) >= min_distinct, want.sequences
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :want.sequences.shape[1]], want.sequences.numpy())
    if num_beams > 1:
        np.testing.assert_allclose(np.asarray(out.sequences_scores), want.sequences_scores.numpy(), atol=1e-4)


@functools.lru_cache(maxsize=None)
def matrix_checkpoint(name: str) -> tuple[str, object]:
    """(folder, float32 torch model in eval mode) of ``MATRIX[name]``, with randomised norm weights and biases."""
    cfg_cls, model_cls, overrides = MATRIX[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**BASE, **overrides})).eval()
    return randomize_vectors_and_save(model, name), model


@functools.lru_cache(maxsize=None)
def matrix_models(name: str) -> tuple[jaxgen.Model, object]:
    """(jaxgen float32 model, transformers model) of ``matrix_checkpoint(name)``, loaded once per session."""
    folder, hf = matrix_checkpoint(name)
    return jaxgen.load_model(folder, dtype="float32"), hf


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_all_compiles():
    """Every XLA compilation in the process, whatever the function (host-side helpers included)."""
    names: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop every compiled program after each test file. XLA:CPU maps each executable's code into memory in many
    small regions, and a long-lived xdist worker that compiles the whole suite's programs passes the kernel's
    vm.max_map_count (65530): the next compile then segfaults. The files' own caches (models, checkpoints) stay."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
