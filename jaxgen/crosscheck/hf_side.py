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
        self.images: dict[str, np.ndarray] = {}  # the current prompt's processor outputs beyond its ids

    def image_kwargs(self, length: int) -> dict[str, np.ndarray]:
        """The current prompt's image inputs for a sequence of ``length`` tokens that starts with the prompt
        (``token_type_ids`` extended with text zeros)."""
        kw = dict(self.images)
        if "token_type_ids" in kw:
            tt = kw["token_type_ids"]
            kw["token_type_ids"] = np.pad(tt, ((0, 0), (0, length - tt.shape[1])))
        return kw

    def hf_logits(self, seqs: list[list[int]]) -> list[np.ndarray]:
        import torch

        out = []
        with torch.no_grad():
            for s in seqs:
                extra = {k: torch.tensor(v) for k, v in self.image_kwargs(len(s)).items()}
                logits = self.hf(input_ids=torch.tensor([s], dtype=torch.long), **extra).logits[0]
                out.append(logits.float().numpy())
        return out

    def jax_logits(self, seqs: list[list[int]]) -> list[np.ndarray]:
        from jaxgen.api.scoring import forward_logits

        # One sequence at a time, like the transformers side: every call of a cross-check then shares one
        # compiled program per length bucket, whatever the number of sequences a mode returns.
        return [np.asarray(forward_logits(self.jax, np.asarray([s], np.int32), **self.image_kwargs(len(s))))[0]
                for s in seqs]

def hf_generate_kwargs(cfg, max_new: int, prompt_length: int | None = None, tokenizer=None) -> dict[str, Any]:
    """``model.generate`` arguments for jaxgen's ``cfg``: transformers' own options as they are; vLLM's
    presence/frequency penalties (which transformers lacks) as a ``logits_processor`` (counting from the padded
    ``prompt_length``; None: the length ``input_ids`` has at its first call); ``stop_strings`` with the
    ``tokenizer``."""
    eos = list(cfg.eos_token_ids)
    lists = lambda x: [lists(v) for v in x] if isinstance(x, (list, tuple)) else x
    kwargs = dict(max_new_tokens=max_new, min_new_tokens=cfg.min_new_tokens or None,
                  repetition_penalty=cfg.repetition_penalty, length_penalty=cfg.length_penalty,
                  early_stopping=cfg.early_stopping, eos_token_id=(eos if len(eos) > 1 else eos[0]) if eos else None,
                  pad_token_id=cfg.pad_token_id, return_dict_in_generate=True, output_scores=True, output_logits=True,
                  min_length=cfg.min_length, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                  bad_words_ids=lists(cfg.bad_words_ids), suppress_tokens=lists(cfg.suppress_tokens),
                  begin_suppress_tokens=lists(cfg.begin_suppress_tokens),
                  sequence_bias=None if cfg.sequence_bias is None else [[list(ids), float(b)]
                                                                         for ids, b in cfg.sequence_bias],
                  typical_p=cfg.typical_p, epsilon_cutoff=cfg.epsilon_cutoff, eta_cutoff=cfg.eta_cutoff,
                  exponential_decay_length_penalty=lists(cfg.exponential_decay_length_penalty),
                  forced_bos_token_id=cfg.forced_bos_token_id, forced_eos_token_id=lists(cfg.forced_eos_token_id),
                  renormalize_logits=cfg.renormalize_logits)
    if cfg.stop_strings is not None:
        kwargs.update(stop_strings=lists(cfg.stop_strings), tokenizer=tokenizer)
    if cfg.presence_penalty or cfg.frequency_penalty:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([presence_frequency_processor(
            prompt_length, cfg.presence_penalty, cfg.frequency_penalty)])
    return kwargs


def presence_frequency_processor(prompt_length: int | None, presence: float, frequency: float):
    """vLLM's presence/frequency penalties as a transformers ``LogitsProcessor`` (counts over
    ``input_ids[:, prompt_length:]``, the generated tokens; ``prompt_length`` None: the length of ``input_ids``
    at the first call, i.e. one ``generate`` call per processor). transformers runs a caller's processors after
    its own masks and before the sampling warpers: where jaxgen applies them."""
    import torch
    from transformers import LogitsProcessor

    class PresenceFrequencyPenalty(LogitsProcessor):
        start = prompt_length

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.start is None:
                self.start = input_ids.shape[1]
            out = input_ids[:, self.start:]
            counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
            scores = scores - frequency * counts
            return scores - presence * (counts > 0).to(scores.dtype)

    return PresenceFrequencyPenalty()


def load_hf(hf_dir: str, dtype: str, images: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    auto = AutoModelForImageTextToText if images else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(hf_dir, dtype=torch_dtype, local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for folders it cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrosscheckError(f"{hf_dir}: transformers cannot load this model: {first}") from e
    return model.eval()
