"""Model families: each is a parse function (``config.json`` -> :class:`~jaxgen.config.ModelConfig` with per-layer
specs), a name table (``checkpoints_convert.tables``) and the few layer choices its specs name.

Nothing here imports jax: conversion reads configs without flax. The decode side never sees a family's name.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxgen.config import SUPPORTED_MODEL_TYPES, ModelConfig
from jaxgen.errors import ConfigError
from jaxgen.families import deepseek, gemma, gemma4, gpt2, gpt_oss, llama, moe, multimodal, phi3, qwen3_5

Parser = Callable[[dict, str], ModelConfig]

PARSERS: dict[str, Parser] = {
    "llama": llama.parse, "mistral": llama.parse, "qwen2": llama.parse, "qwen3": llama.parse,
    "gpt2": gpt2.parse,
    "gemma": gemma.parse, "gemma2": gemma.parse, "gemma3_text": gemma.parse,
    "gemma4_text": gemma4.parse,
    "phi3": phi3.parse,
    "qwen3_5_text": qwen3_5.parse, "qwen3_5_moe_text": qwen3_5.parse, "qwen3_next": qwen3_5.parse,
    "mixtral": moe.parse, "qwen2_moe": moe.parse, "qwen3_moe": moe.parse,
    "deepseek_v3": deepseek.parse,
    "gpt_oss": gpt_oss.parse,
}
assert set(PARSERS) == set(SUPPORTED_MODEL_TYPES), (set(PARSERS), SUPPORTED_MODEL_TYPES)
# Multimodal checkpoints whose language model jaxgen loads (jaxgen.families.multimodal).
WRAPPERS = tuple(multimodal.WRAPPERS)


def parse_config(raw: dict, source: str = "config.json") -> ModelConfig:
    """Parse a transformers ``config.json`` dict (4.x or 5.x schema) with its family's parse function."""
    wrapper = raw.get("model_type") if raw.get("model_type") in multimodal.WRAPPERS else None
    outer, raw = raw, multimodal.text_fields(raw, source)
    model_type = raw.get("model_type")
    if model_type not in PARSERS:
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; jaxgen supports "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)} and the language models of "
                          f"{', '.join(WRAPPERS)} checkpoints.")
    quant = raw.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    # FP8 (DeepSeek-V3's release), GPTQ, AWQ, bitsandbytes: packed weights and scales jaxgen does not read. gpt-oss's
    # MXFP4 experts are the exception: conversion dequantizes them (checkpoints_convert.mxfp4).
    if quant and not (model_type == "gpt_oss" and method == "mxfp4"):
        raise ConfigError(f"{source}: this is a quantized checkpoint (quantization_config.quant_method={method!r}); "
                          "jaxgen loads float weights only. Dequantize it to bfloat16 first (e.g. load it in "
                          "transformers with the matching dequantize option and save_pretrained), then load that.")
    config = PARSERS[model_type](raw, source)
    if not wrapper:
        return config
    return dataclasses.replace(config, wrapper=wrapper,
                               vision=multimodal.vision_config(outer, config.hidden_size, source))
