"""jaxgen: LLM text generation in JAX/Flax with transformers parity.

    model = jaxgen.load_model(path, dtype="float32")
    out = jaxgen.generate(model, input_ids, attention_mask, key=jax.random.key(0), max_new_tokens=32)
"""

from jaxgen.config import ModelConfig
from jaxgen.errors import CheckpointError, ConfigError, JaxgenError
from jaxgen.generate import compile_count, generate, lower
from jaxgen.generation_config import GenerationConfig
from jaxgen.loading import load_model
from jaxgen.model import Model
from jaxgen.outputs import GenerationOutput
from jaxgen import crosscheck
from jaxgen.scoring import ScoreOutput, score
from jaxgen.tokenizer import TextGeneration, generate_text, load_tokenizer

__all__ = ["CheckpointError", "ConfigError", "GenerationConfig", "GenerationOutput", "JaxgenError", "Model",
           "ModelConfig", "compile_count", "generate", "load_model", "lower"]
__all__ += ["ScoreOutput", "TextGeneration", "crosscheck", "generate_text", "load_tokenizer", "score"]
__version__ = "0.1.0"
