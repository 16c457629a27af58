"""jaxgen: LLM text generation in JAX/Flax with transformers parity.

    model = jaxgen.load_model(path, dtype="float32")
    out = jaxgen.generate(model, input_ids, attention_mask, key=jax.random.key(0), max_new_tokens=32)

The package reads as its pipeline: ``checkpoints_convert`` (checkpoint -> params) -> ``jaxgen.config`` /
``jaxgen.model`` / ``jaxgen.nn`` (params -> ``step``) -> ``jaxgen.decode`` (the compiled loop) -> ``jaxgen.api``
(``generate``, ``score``, outputs); ``text``, ``parallel``, ``crosscheck`` and ``cli`` are the edges. Names are
imported on first use, so ``import jaxgen`` stays cheap and never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "ModelConfig": "jaxgen.config",
    "JaxgenError": "jaxgen.errors", "ConfigError": "jaxgen.errors", "CheckpointError": "jaxgen.errors",
    "GenerationError": "jaxgen.errors", "NonFiniteLogitsError": "jaxgen.errors",
    "Model": "jaxgen.model",
    "load_model": "jaxgen.loading",
    "generate": "jaxgen.api.generate", "compile_count": "jaxgen.api.generate", "lower": "jaxgen.api.generate",
    "GenerationConfig": "jaxgen.api.generation_config",
    "PRESETS": "jaxgen.api.presets", "preset": "jaxgen.api.presets",
    "GenerationOutput": "jaxgen.api.outputs",
    "ScoreOutput": "jaxgen.api.scoring", "score": "jaxgen.api.scoring",
    "TextGeneration": "jaxgen.text.generate_text", "generate_text": "jaxgen.text.generate_text",
    "load_tokenizer": "jaxgen.text.tokenizer", "load_processor": "jaxgen.text.images",
    "make_mesh": "jaxgen.parallel.sharding",
    "Engine": "jaxgen.engine.engine",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'jaxgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
