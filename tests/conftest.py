"""Shared fixtures: tiny random transformers models saved with ``save_pretrained`` into temp folders."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import atexit
import functools
import shutil
import tempfile

import pytest
import torch
import transformers

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
}
FAMILIES = ["llama_gqa", "mistral_window", "qwen2_bias", "qwen3_qknorm"]

_ROOT = tempfile.mkdtemp(prefix="jaxgen-tests-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def hf_checkpoint(variant: str, seed: int = 0, dtype: str = "float32") -> tuple[str, object]:
    """Build (once per session) a tiny random HF model; returns (folder, torch model in eval mode)."""
    cfg_cls, model_cls, overrides = VARIANTS[variant]
    config = getattr(transformers, cfg_cls)(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    folder = tempfile.mkdtemp(prefix=f"{variant}-{seed}-", dir=_ROOT)
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
