"""Multimodal checkpoints: ``ForConditionalGeneration`` folders of Gemma 3 (``gemma3``) and MiniCPM-V 4.6
(``minicpmv4_6``), which jaxgen loads with their vision side, and of Gemma 4 (``gemma4``), Qwen3.5 (``qwen3_5``) and
Qwen3.5-MoE (``qwen3_5_moe``), whose language model it loads (their towers are left out).

Their ``config.json`` nests the language model's fields in ``text_config``; a few that concern the whole model
(``tie_word_embeddings``, the dtype, token ids, a quantization config) stay at the top level and win. Their
weights keep the language model under ``model.language_model.*`` (transformers 5; 4.x Gemma 3 saved
``language_model.model.*`` and ``language_model.lm_head.*``) beside the vision (and audio) towers, which the
language model does not read: conversion maps the first onto the text layout and, for a wrapper without a vision
side here, leaves the towers out, saying so. A vision side's tensors become ``vision.*`` (the key below ``model.``).
"""

from __future__ import annotations

from typing import Mapping

from jaxgen.config import VisionConfig
from jaxgen.errors import ConfigError

# wrapper model_type -> (its language model's model_type, transformers' top-level tie_word_embeddings default)
WRAPPERS: dict[str, tuple[str, bool]] = {"gemma3": ("gemma3_text", True), "gemma4": ("gemma4_text", True),
                                         "qwen3_5": ("qwen3_5_text", False), "qwen3_5_moe": ("qwen3_5_moe_text", False),
                                         "minicpmv4_6": ("qwen3_5_text", False)}
# The wrappers whose images jaxgen reads (VisionConfig.kind).
VISION = ("gemma3", "minicpmv4_6")
# Top-level fields of the wrapper that apply to its language model.
_TOP_LEVEL = ("dtype", "torch_dtype", "quantization_config", "bos_token_id", "eos_token_id", "pad_token_id")
# Where the language model's tensors live in each layout, and what they are in the text model's.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))
# The parts of a multimodal checkpoint that are not the language model (towers, projectors, their embedders), at
# the top level (4.x) or under model. (5.x).
_PARTS = ("vision_tower.", "multi_modal_projector.", "merger.", "visual.", "embed_vision.", "audio_tower.",
          "embed_audio.")
_OTHER_PARTS = _PARTS + tuple("model." + p for p in _PARTS)


def text_fields(raw: dict, source: str) -> dict:
    """The language model's ``config.json`` fields of wrapper config ``raw`` (with ``model_type`` set to the
    text model's); ``raw`` itself when it is not a wrapper."""
    model_type = raw.get("model_type")
    if model_type not in WRAPPERS:
        return raw
    text_type, tie_default = WRAPPERS[model_type]
    text = raw.get("text_config")
    if not isinstance(text, Mapping):
        raise ConfigError(f"{source}: a {model_type} config needs a 'text_config' object (its language model's "
                          f"fields); got {text!r}.")
    if text.get("model_type", text_type) != text_type:
        raise ConfigError(f"{source}: text_config.model_type is {text['model_type']!r}; a {model_type} checkpoint's "
                          f"language model is {text_type!r}.")
    merged = {**text, **{k: raw[k] for k in _TOP_LEVEL if raw.get(k) is not None}}
    merged["tie_word_embeddings"] = raw.get("tie_word_embeddings", tie_default)
    merged["model_type"] = text_type
    return merged


def language_model_key(key: str) -> str | None:
    """Key ``key`` of a multimodal checkpoint in the text model's layout; None for a tensor of another part
    (vision or audio tower, projector); ``key`` itself when it fits no known layout (the tables then reject it)."""
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith(_OTHER_PARTS):
        return None
    return key


def wrapped_key(key: str) -> str:
    """The inverse for export: text-model key ``key`` in transformers 5's multimodal layout."""
    return "model.language_model." + key[len("model."):] if key.startswith("model.") else key


def vision_key(key: str) -> str | None:
    """The jaxgen name stem of a vision-side tensor (``vision.`` + its key below ``model.``), or None when ``key`` is
    not one. SigLIP's attention-pooling ``head`` is None too: transformers' Gemma 3 reads the last hidden state."""
    stem = key[len("model."):] if key.startswith("model.") else key
    if not stem.startswith(_PARTS) or ".head." in stem:
        return None
    if stem.startswith("vision_tower.vision_model."):  # transformers 4.x's SiglipVisionModel kept this level
        stem = "vision_tower." + stem[len("vision_tower.vision_model."):]
    return "vision." + stem


# transformers' SiglipVisionConfig and MiniCPMV4_6VisionConfig defaults, for fields a config.json leaves out.
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        num_channels=3, image_size=224, patch_size=16, layer_norm_eps=1e-6,
                        hidden_act="gelu_pytorch_tanh")


def vision_config(raw: dict, text_hidden_size: int, source: str) -> VisionConfig | None:
    """The vision side of wrapper config ``raw`` (None for a text-only or tower-less checkpoint)."""
    kind = raw.get("model_type")
    if kind not in VISION:
        return None
    v = raw.get("vision_config")
    if not isinstance(v, Mapping):
        raise ConfigError(f"{source}: a {kind} config needs a 'vision_config' object; got {v!r}.")
    f = {**_VISION_DEFAULTS, **{k: x for k, x in v.items() if x is not None}}
    if f["hidden_act"] not in ("gelu_pytorch_tanh", "gelu_new"):
        raise ConfigError(f"{source}: vision_config.hidden_act={f['hidden_act']!r} is not supported (jaxgen's vision "
                          "towers use gelu_pytorch_tanh).")
    for name in ("image_size", "patch_size"):
        if not isinstance(f[name], int):
            raise ConfigError(f"{source}: vision_config.{name}={f[name]!r}: jaxgen reads square images and patches "
                              "(one integer).")
    if f["hidden_size"] % f["num_attention_heads"]:
        raise ConfigError(f"{source}: vision_config.hidden_size={f['hidden_size']} is not a multiple of "
                          f"num_attention_heads={f['num_attention_heads']}.")
    common = dict(kind=kind, hidden_size=f["hidden_size"], intermediate_size=f["intermediate_size"],
                  num_hidden_layers=f["num_hidden_layers"], num_attention_heads=f["num_attention_heads"],
                  num_channels=f["num_channels"], image_size=f["image_size"], patch_size=f["patch_size"],
                  layer_norm_eps=float(f["layer_norm_eps"]), text_hidden_size=text_hidden_size)
    if kind == "gemma3":
        tokens = raw.get("mm_tokens_per_image", 256)
        side = int(round(tokens ** 0.5)) if isinstance(tokens, int) and tokens > 0 else 0
        grid = f["image_size"] // f["patch_size"]
        if side * side != tokens or grid % side:
            raise ConfigError(f"{source}: mm_tokens_per_image={tokens!r} must be a square number whose side divides "
                              f"the {grid}x{grid} patch grid.")
        return VisionConfig(**common, mm_tokens_per_image=tokens,
                            image_token_id=raw.get("image_token_index", raw.get("image_token_id", 262_144)))
    image_token = raw.get("image_token_id")
    if not isinstance(image_token, int):
        raise ConfigError(f"{source}: a minicpmv4_6 config needs image_token_id (the image placeholder token).")
    mode = raw.get("downsample_mode", "16x")
    if mode not in ("16x", "4x"):
        raise ConfigError(f"{source}: downsample_mode={mode!r}; transformers knows '16x' and '4x'.")
    return VisionConfig(**common, image_token_id=image_token,
                        insert_layer_id=raw.get("insert_layer_id", 6),  # transformers copies it onto the tower
                        window_kernel_size=tuple(v.get("window_kernel_size", (2, 2))),
                        merge_kernel_size=tuple(raw.get("merge_kernel_size", (2, 2))),
                        merger_times=raw.get("merger_times", 1), downsample_mode=mode)
