"""Runners that time one ``generate`` call in jaxgen or transformers (PyTorch) on the same folder and prompts.

Both take the same ``settings`` dict (``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``num_beams``,
``top_logprobs``) and disable EOS, so every call generates exactly ``n`` tokens (checked).
``runner.call(settings, ids, mask, n) -> (seconds, new tokens int[B*R, n])``.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Sequence

import numpy as np

from jaxgen.bench.measure import SEED

SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)
PROMPT_LEN = 32
B8_LENGTHS = (32, 9, 17, 25, 12, 30, 5, 21)  # mixed lengths, left-padded to 32 (one prompt bucket)
PROMPT_TEXT = ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
               "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nclass Stack:\n")

# What the `jaxgen bench` modes mean (the benchmark scripts have their own, finer list).
MODES = {"greedy": {}, "sampling": dict(do_sample=True, **SAMPLING), "beam": dict(num_beams=4)}


def batch_lengths(batch: int) -> list[int]:
    """Prompt lengths for a batch: one 32-token prompt at batch 1, else the mixed lengths of ``B8_LENGTHS``."""
    return [PROMPT_LEN] if batch == 1 else [B8_LENGTHS[i % len(B8_LENGTHS)] for i in range(batch)]


def make_prompts(path: str | None, vocab: int, pad: int, lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Identical prompts for every framework: ``(ids, mask)`` int32 ``[B, max(lengths)]``, left-padded.

    A model with a tokenizer gets its own tokens of a line of Python (the bundled model's domain); otherwise
    (or when that text is too short) random ids. Row ``r`` is the pool rotated by ``3 r``, cut to its length.
    """
    width = max(lengths)
    toks = None
    if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
        from jaxgen.text.tokenizer import load_tokenizer

        ids = load_tokenizer(path)(PROMPT_TEXT, add_special_tokens=False)["input_ids"]
        if len(ids) >= width:
            toks = np.asarray(ids, np.int64)
    if toks is None:
        toks = np.random.default_rng(SEED).integers(min(3, vocab - 1), vocab, size=width)
    out = np.full((len(lengths), width), pad, np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for r, n in enumerate(lengths):
        out[r, width - n:] = (np.roll(toks, 3 * r) if r else toks)[:n]
        mask[r, width - n:] = 1
    return out, mask


class JaxgenRunner:
    def __init__(self, path: str | None, dtype: str = "float32", model=None):
        import jax

        import jaxgen

        self.jax, self.jaxgen = jax, jaxgen
        t = time.perf_counter()
        self.model = model if model is not None else jaxgen.load_model(path, dtype=dtype)
        jax.block_until_ready(self.model.params)
        self.load_s = time.perf_counter() - t
        gc = self.model.generation_config or {}
        pad = gc.get("pad_token_id", self.model.config.pad_token_id)
        self.pad = int(pad if pad is not None else 0)
        self.vocab = self.model.config.vocab_size

    def call(self, settings: dict, ids, mask, n: int, **extra) -> tuple[float, np.ndarray]:
        kw = dict(max_new_tokens=n, eos_token_id=None, pad_token_id=self.pad, do_sample=False, num_beams=1,
                  top_logprobs=0)
        kw.update(settings)
        kw.update(extra)
        key = self.jax.random.key(SEED) if kw.get("do_sample") else None
        t = time.perf_counter()
        out = self.jaxgen.generate(self.model, ids, mask, key=key, **kw)
        self.jax.block_until_ready(out)
        dt = time.perf_counter() - t
        gen = np.asarray(out.num_generated)
        assert (gen == n).all(), f"jaxgen generated {gen.tolist()} tokens, expected {n}"
        return dt, np.asarray(out.sequences)[:, ids.shape[1]:]

    def cache_size(self) -> int:
        return self.jaxgen.compile_count()


class HFRunner:
    """transformers (PyTorch) ``generate`` with the default DynamicCache and no ``torch.compile``."""

    def __init__(self, path: str, dtype: str = "float32", device: str = "cpu"):
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a benchmark's terminal is for its own progress and table
        self.torch = torch
        torch.set_num_threads(os.cpu_count() or 1)
        self.dev = device
        t = time.perf_counter()
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype)).to(device).eval()
        self.load_s = time.perf_counter() - t
        self.vocab = int(self.model.config.vocab_size)
        gc = copy.deepcopy(self.model.generation_config)
        pad = gc.pad_token_id if gc.pad_token_id is not None else self.model.config.pad_token_id
        self.pad = int(pad if pad is not None else 0)
        # EOS off: nothing stops a row before max_new_tokens (the length of every output is checked).
        gc.eos_token_id = None
        gc.pad_token_id = self.pad
        gc.do_sample, gc.temperature, gc.top_k, gc.top_p, gc.max_length = False, 1.0, 50, 1.0, None
        self.base_config = gc

    def call(self, settings: dict, ids, mask, n: int, **extra) -> tuple[float, np.ndarray]:
        torch = self.torch
        s = dict(settings, **extra)
        gc = copy.deepcopy(self.base_config)
        gc.max_new_tokens, gc.min_new_tokens = n, None
        if s.get("do_sample"):
            gc.do_sample = True
            gc.temperature, gc.top_k, gc.top_p = (s.get(k, SAMPLING[k]) for k in ("temperature", "top_k", "top_p"))
        if s.get("num_beams"):
            gc.num_beams = s["num_beams"]
        lp = s.get("top_logprobs", 0)
        if lp:
            gc.return_dict_in_generate, gc.output_logits = True, True
        torch.manual_seed(SEED)
        t = time.perf_counter()
        with torch.inference_mode():
            ii = torch.as_tensor(ids, dtype=torch.long, device=self.dev)
            mm = torch.as_tensor(mask, dtype=torch.long, device=self.dev)
            out = self.model.generate(ii, attention_mask=mm, generation_config=gc)
            if lp:
                # What a user does for top-k logprobs in transformers: log-softmax of the kept logits, then top-k.
                top = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).topk(lp, dim=-1)
                _ = top.values.cpu(), top.indices.cpu()
                out = out.sequences
            if self.dev != "cpu":
                torch.cuda.synchronize()
        dt = time.perf_counter() - t
        new = out[:, ids.shape[1]:].cpu().numpy()
        assert new.shape[1] == n, f"transformers generated {new.shape[1]} tokens, expected {n}"
        return dt, new
