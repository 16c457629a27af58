"""Hugging Face checkpoints -> jaxgen parameters: lazy validating reader, per-family name tables, atomic writer.

``load_hf_params`` converts in memory; ``convert_checkpoint`` writes a converted folder that ``read_converted``
reads back (``is_converted`` tells the two kinds of folder apart). ``export.save_hf_safetensors`` goes the other
way, jaxgen params -> a Hugging Face ``model.safetensors``. Nothing here imports jax or flax.
"""

from checkpoints_convert.convert import convert_checkpoint, is_converted, load_hf_params, read_converted

__all__ = ["load_hf_params", "convert_checkpoint", "read_converted", "is_converted"]
