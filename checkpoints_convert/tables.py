"""Per-family tables between Hugging Face state-dict keys and jaxgen parameter names, with named transforms.

jaxgen's modules mirror transformers' attribute names, so a rule is a module path and a leaf rename
(``weight`` -> ``kernel`` / ``embedding``), plus a transform: linear weights go from torch's ``[out, in]`` to
flax's ``[in, out]``. The same rules read backwards give the export direction (jaxgen name -> HF key).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

_LAYER = r"model\.layers\.\d+"
_LINEAR = rf"{_LAYER}\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """torch ``Linear.weight [out, in]`` <-> flax ``Linear.kernel [in, out]`` (contiguous, so jax copies once)."""
    return np.ascontiguousarray(x.T)


# Named so that a table stays data, and so shape checks know how each transform moves dimensions.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"identity": identity, "transpose": transpose}
SHAPE_OF: dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {
    "identity": lambda s: s,
    "transpose": lambda s: s[::-1],
}
# The transform that undoes each one (for export). Both used today are their own inverses.
INVERSE: dict[str, str] = {"identity": "identity", "transpose": "transpose"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF key ``M.hf_leaf`` <-> jaxgen name ``M.leaf`` for every module path ``M`` that fully matches ``module``;
    ``transform`` turns the HF tensor into jaxgen's, ``INVERSE[transform]`` turns it back."""

    module: str
    hf_leaf: str
    leaf: str
    transform: str
    hf_pattern: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)
    pattern: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        assert self.transform in TRANSFORMS and self.transform in INVERSE, self.transform
        # Frozen: the compiled patterns are derived once, here.
        object.__setattr__(self, "hf_pattern", re.compile(rf"({self.module})\.{re.escape(self.hf_leaf)}"))
        object.__setattr__(self, "pattern", re.compile(rf"({self.module})\.{re.escape(self.leaf)}"))


# Llama, Mistral, Qwen2 and Qwen3 share one layout; biases and q/k norms exist only where the config says so,
# which the shape check against `shapes.param_shapes(config)` enforces (an unexpected bias is an unused tensor).
LLAMA_RULES: tuple[Rule, ...] = (
    Rule(r"model\.embed_tokens", "weight", "embedding", "identity"),
    Rule(_LINEAR, "weight", "kernel", "transpose"),
    Rule(_LINEAR, "bias", "bias", "identity"),
    Rule(rf"{_LAYER}\.(?:input_layernorm|post_attention_layernorm|self_attn\.[qk]_norm)|model\.norm", "weight",
         "weight", "identity"),
    Rule(r"lm_head", "weight", "kernel", "transpose"),
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
        m = rule.hf_pattern.fullmatch(key)
        if m:
            return f"{m.group(1)}.{rule.leaf}", rule.transform
    return None


def hf_key(model_type: str, name: str) -> tuple[str, str] | None:
    """``(HF key, transform name)`` that turns jaxgen parameter ``name`` back into its HF tensor, or None."""
    for rule in TABLES[model_type]:
        m = rule.pattern.fullmatch(name)
        if m:
            return f"{m.group(1)}.{rule.hf_leaf}", INVERSE[rule.transform]
    return None


def source_key(model_type: str, name: str) -> str:
    """The HF key jaxgen parameter ``name`` comes from (for error messages; ``name`` itself if no rule fits)."""
    found = hf_key(model_type, name)
    return found[0] if found else name
