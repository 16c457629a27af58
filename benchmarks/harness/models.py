"""The benchmark's models (random Llamas saved with transformers, the bundled model), modes and prompts."""

from __future__ import annotations

import glob
import os

from jaxgen.bench.measure import SEED
from jaxgen.bench.runners import B8_LENGTHS, PROMPT_LEN, SAMPLING, make_prompts

MODES = ("greedy_b1", "greedy_b8", "sample_b1", "beam4_b1", "logprobs5_b1")
MODE_TITLES = {"greedy_b1": "greedy b1", "greedy_b8": "greedy b8", "sample_b1": "sampling b1",
               "beam4_b1": "beam-4 b1", "logprobs5_b1": "greedy+top5 lp b1"}

# Random Llamas (transformers LlamaConfig); initializer_range 0.2 makes logits spread out, so greedy/beam paths
# are not degenerate repeats of one token.
MODEL_SPECS = {
    "llama-5m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=4096),
    "llama-125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=4, vocab_size=32000),
}
DEMO_NAME = "demo"
INITIALIZER_RANGE = 0.2


def mode_settings(mode: str) -> dict:
    """Generation settings of a mode (the runners' ``settings`` dict); the batch comes from the name."""
    if mode == "sample_b1":
        return dict(do_sample=True, **SAMPLING)
    if mode == "beam4_b1":
        return dict(num_beams=4)
    if mode == "logprobs5_b1":
        return dict(top_logprobs=5)
    return {}


def build_random_model(name: str, folder: str) -> str:
    """A random Llama saved with ``save_pretrained`` (float32), EOS unset; reused if already there."""
    import torch
    import transformers

    path = os.path.join(folder, name)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    cfg = transformers.LlamaConfig(**MODEL_SPECS[name], initializer_range=INITIALIZER_RANGE,
                                   max_position_embeddings=2048, bos_token_id=1, eos_token_id=None, pad_token_id=0,
                                   tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    del model
    return path


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
