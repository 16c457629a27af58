"""The benchmark's models (random Llamas saved with transformers, the bundled model), modes and prompts."""

from __future__ import annotations

import glob
import os

from jaxgen.bench.measure import SEED
from jaxgen.bench.runners import B8_LENGTHS, PROMPT_LEN, SAMPLING, make_prompts

MODES = ("greedy_b1", "greedy_b8", "sample_b1", "beam4_b1", "logprobs5_b1", "beam3_b1")
MODE_TITLES = {"greedy_b1": "greedy b1", "greedy_b8": "greedy b8", "sample_b1": "sampling b1",
               "beam4_b1": "beam-4 b1", "logprobs5_b1": "greedy+top5 lp b1", "beam3_b1": "beam-3 b1"}

# Random models saved with transformers: name -> (config class, model class, config fields). initializer_range 0.2
# makes logits spread out, so greedy/beam paths are not degenerate repeats of one token. The Llamas are the default
# set; the other families (real layer shapes, fewer layers where the full model would not fit a 2-core run) are
# asked for with --models or --models families / moe.
MODEL_SPECS = {
    "llama-5m": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=4096)),
    "llama-125m": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, vocab_size=32000)),
    # GPT-2 124M exactly (tied head, learned positions, fused c_attn).
    "gpt2-124m": ("GPT2Config", "GPT2LMHeadModel", dict(
        n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    # Gemma 2 2B's layer shapes (hidden 2304, 8 heads x 256, 4 KV heads, GeGLU 9216, soft caps, alternating
    # 4096-token windows), 6 of its 26 layers, and a 32k vocabulary instead of 256k (tied head).
    "gemma2-shaped": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, vocab_size=32000, sliding_window=4096)),
    # Mixtral's design (8 experts, top-2, GQA) at ~300M parameters, ~110M active.
    "mixtral-shaped": ("MixtralConfig", "MixtralForCausalLM", dict(
        hidden_size=768, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=12,
        num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000)),
    # Qwen3-30B-A3B's design (128 experts of 768, top-8, q/k norm) scaled down: 64 experts of 256, top-8.
    "qwen3moe-shaped": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        hidden_size=768, intermediate_size=2048, moe_intermediate_size=256, num_hidden_layers=8,
        num_attention_heads=12, num_key_value_heads=4, head_dim=64, num_experts=64, num_experts_per_tok=8,
        norm_topk_prob=True, vocab_size=32000)),
    # Qwen3.5's hybrid design (3 Gated DeltaNet layers per gated full-attention layer, partial RoPE) at ~250M:
    # hidden 1024, 12 layers, 16 value heads of 128 over 8 key heads.
    "qwen3_5-shaped": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=8,
        num_key_value_heads=2, head_dim=128, linear_num_key_heads=8, linear_num_value_heads=16,
        linear_key_head_dim=128, linear_value_head_dim=128, vocab_size=32000)),
}
MODEL_GROUPS = {"default": ["llama-5m", "llama-125m"], "families": ["gpt2-124m", "gemma2-shaped"],
                "moe": ["mixtral-shaped", "qwen3moe-shaped"], "hybrid": ["qwen3_5-shaped"]}
DEMO_NAME = "demo"
INITIALIZER_RANGE = 0.2


def mode_settings(mode: str) -> dict:
    """Generation settings of a mode (the runners' ``settings`` dict); the batch comes from the name."""
    if mode == "sample_b1":
        return dict(do_sample=True, **SAMPLING)
    if mode == "beam4_b1":
        return dict(num_beams=4)
    if mode == "beam3_b1":  # OmniLMM's deterministic preset's beam count
        return dict(num_beams=3)
    if mode == "logprobs5_b1":
        return dict(top_logprobs=5)
    return {}


def build_random_model(name: str, folder: str) -> str:
    """A random ``MODEL_SPECS[name]`` saved with ``save_pretrained`` (float32), EOS unset; reused if there."""
    import torch
    import transformers

    path = os.path.join(folder, name)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    cfg_cls, model_cls, fields = MODEL_SPECS[name]
    common = dict(initializer_range=INITIALIZER_RANGE, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    if cfg_cls != "GPT2Config":  # GPT-2 has n_positions and always ties its head
        common.update(max_position_embeddings=4096, tie_word_embeddings=cfg_cls == "Gemma2Config")
    cfg = getattr(transformers, cfg_cls)(**fields, **common)
    torch.manual_seed(SEED)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.save_pretrained(path)
    del model
    return path


def expand_models(names: list[str]) -> list[str]:
    """``--models`` entries, with group names (``default``, ``families``, ``moe``) expanded."""
    out = []
    for n in names:
        out.extend(MODEL_GROUPS.get(n, [n]))
    return out


def demo_model_path() -> str | None:
    """The bundled model's folder when it is complete (config and weights), else None."""
    from jaxgen.loading import BUNDLED_MODEL

    has_weights = glob.glob(os.path.join(BUNDLED_MODEL, "*.safetensors")) or os.path.isfile(
        os.path.join(BUNDLED_MODEL, "pytorch_model.bin"))
    return BUNDLED_MODEL if os.path.isfile(os.path.join(BUNDLED_MODEL, "config.json")) and has_weights else None


def prompts(path: str, vocab: int, pad: int) -> dict:
    """Identical prompts for every framework: b1 of PROMPT_LEN tokens, b8 of mixed lengths left-padded."""
    return dict(b1=make_prompts(path, vocab, pad, [PROMPT_LEN]), b8=make_prompts(path, vocab, pad, B8_LENGTHS))


def mode_prompts(all_prompts: dict, mode: str):
    return all_prompts["b8" if mode == "greedy_b8" else "b1"]
