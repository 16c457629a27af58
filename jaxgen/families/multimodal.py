"""Multimodal checkpoints whose language model jaxgen loads: Gemma 3 (``gemma3``), Gemma 4 (``gemma4``), Qwen3.5
(``qwen3_5``) and Qwen3.5-MoE (``qwen3_5_moe``) ``ForConditionalGeneration`` folders.

Their ``config.json`` nests the language model's fields in ``text_config``; a few that concern the whole model
(``tie_word_embeddings``, the dtype, token ids, a quantization config) stay at the top level and win. Their
weights keep the language model under ``model.language_model.*`` (transformers 5; 4.x Gemma 3 saved
``language_model.model.*`` and ``language_model.lm_head.*``) beside the vision (and audio) towers, which the
language model does not read: conversion maps the first onto the text layout and leaves the towers out, saying so.
"""

from __future__ import annotations

from typing import Mapping

from jaxgen.errors import ConfigError

# wrapper model_type -> (its language model's model_type, transformers' top-level tie_word_embeddings default)
WRAPPERS: dict[str, tuple[str, bool]] = {"gemma3": ("gemma3_text", True), "gemma4": ("gemma4_text", True),
                                         "qwen3_5": ("qwen3_5_text", False), "qwen3_5_moe": ("qwen3_5_moe_text", False)}
# Top-level fields of the wrapper that apply to its language model.
_TOP_LEVEL = ("dtype", "torch_dtype", "quantization_config", "bos_token_id", "eos_token_id", "pad_token_id")
# Where the language model's tensors live in each layout, and what they are in the text model's.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))
# The parts of a multimodal checkpoint that are not the language model (towers, projectors, their embedders), at
# the top level (4.x) or under model. (5.x).
_PARTS = ("vision_tower.", "multi_modal_projector.", "visual.", "embed_vision.", "audio_tower.", "embed_audio.")
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
