"""Per-family tables from Hugging Face state-dict keys to jaxgen parameter names, with named transforms.

jaxgen's modules mirror transformers' attribute names, so a table is a handful of regexes: the target is the
same path with the leaf renamed (``weight`` -> ``kernel`` / ``embedding``) and linear weights transposed from
torch's ``[out, in]`` to flax's ``[in, out]``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

_LAYER = r"model\.layers\.\d+"


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """torch ``Linear.weight [out, in]`` -> flax ``Linear.kernel [in, out]`` (contiguous, so jax copies once)."""
    return np.ascontiguousarray(x.T)


# Named so that a table stays data, and so shape checks know how each transform moves dimensions.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"identity": identity, "transpose": transpose}
SHAPE_OF: dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {
    "identity": lambda s: s,
    "transpose": lambda s: s[::-1],
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF keys that fully match ``pattern`` become ``pattern.sub(target, key)`` after ``transform``."""

    pattern: re.Pattern
    target: str
    transform: str


def _rule(pattern: str, target: str, transform: str) -> Rule:
    assert transform in TRANSFORMS, transform
    return Rule(re.compile(pattern), target, transform)


# Llama, Mistral, Qwen2 and Qwen3 share one layout; biases and q/k norms exist only where the config says so,
# which the shape check against `param_shapes(config)` enforces (an unexpected bias is an unused tensor).
LLAMA_RULES: tuple[Rule, ...] = (
    _rule(r"model\.embed_tokens\.weight", "model.embed_tokens.embedding", "identity"),
    _rule(rf"({_LAYER}\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))\.weight", r"\1.kernel", "transpose"),
    _rule(rf"({_LAYER}\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))\.bias", r"\1.bias", "identity"),
    _rule(rf"({_LAYER}\.(?:input_layernorm|post_attention_layernorm|self_attn\.[qk]_norm))\.weight", r"\1.weight",
          "identity"),
    _rule(r"model\.norm\.weight", "model.norm.weight", "identity"),
    _rule(r"lm_head\.weight", "lm_head.kernel", "transpose"),
)

TABLES: dict[str, tuple[Rule, ...]] = {
    "llama": LLAMA_RULES,
    "mistral": LLAMA_RULES,
    "qwen2": LLAMA_RULES,
    "qwen3": LLAMA_RULES,
}

# Non-parameter buffers that older transformers versions saved; they are recomputed from the config.
IGNORED = re.compile(r"(?:model\.layers\.\d+\.self_attn\.)?(?:model\.)?rotary_emb\.inv_freq")

# With tied embeddings the LM head is the embedding; a checkpoint may still carry a copy under this key.
TIED_HEAD_KEY = "lm_head.weight"
EMBED_KEY = "model.embed_tokens.weight"


def map_key(model_type: str, key: str) -> tuple[str, str] | None:
    """``(jaxgen name, transform name)`` for HF ``key``, or None when no rule matches."""
    for rule in TABLES[model_type]:
        if rule.pattern.fullmatch(key):
            return rule.pattern.sub(rule.target, key), rule.transform
    return None


def source_key(target: str) -> str:
    """The HF key a jaxgen name comes from (the inverse of the tables above), for error messages."""
    return re.sub(r"\.(?:kernel|embedding)$", ".weight", target)
