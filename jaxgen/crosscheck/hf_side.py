"""The transformers (PyTorch) side of a cross-check and teacher-forced logits from both sides.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class CrosscheckError(ValueError):
    """A user mistake in a cross-check request (bad mode, a folder transformers cannot load, no prompts...)."""


class Sides:
    """Both models, and full-sequence logits (teacher forcing) from each."""

    def __init__(self, hf_model, jax_model):
        self.hf, self.jax = hf_model, jax_model

    def hf_logits(self, seqs: list[list[int]]) -> list[np.ndarray]:
        import torch

        out = []
        with torch.no_grad():
            for s in seqs:
                logits = self.hf(input_ids=torch.tensor([s], dtype=torch.long)).logits[0]
                out.append(logits.float().numpy())
        return out

    def jax_logits(self, seqs: list[list[int]]) -> list[np.ndarray]:
        from jaxgen.api.scoring import forward_logits

        # One sequence at a time, like the transformers side: every call of a cross-check then shares one
        # compiled program per length bucket, whatever the number of sequences a mode returns.
        return [np.asarray(forward_logits(self.jax, np.asarray([s], np.int32)))[0] for s in seqs]

def hf_generate_kwargs(cfg, max_new: int) -> dict[str, Any]:
    eos = list(cfg.eos_token_ids)
    return dict(max_new_tokens=max_new, min_new_tokens=cfg.min_new_tokens or None,
                repetition_penalty=cfg.repetition_penalty, length_penalty=cfg.length_penalty,
                early_stopping=cfg.early_stopping, eos_token_id=(eos if len(eos) > 1 else eos[0]) if eos else None,
                pad_token_id=cfg.pad_token_id, return_dict_in_generate=True, output_scores=True, output_logits=True)


def load_hf(hf_dir: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype, local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for folders it cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrosscheckError(f"{hf_dir}: transformers cannot load this model: {first}") from e
    return model.eval()
