"""Host side of the engine: requests checked up front, the slot table, admission planning, result assembly.

Everything here is numpy; the only jax calls are the engine's compiled programs (``jaxgen.engine.step``).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Sequence

import numpy as np

from jaxgen.api.generate import _key_data, resolve_config
from jaxgen.api.generation_config import GenerationConfig
from jaxgen.api.inputs import bucket, check_context, check_tokens
from jaxgen.model import Model


@dataclasses.dataclass(eq=False)
class Request:
    """One prompt with its resolved config; its samples' results fill in as they finish."""

    index: int
    prompt: np.ndarray  # int32 [t]
    config: GenerationConfig
    max_new: int
    pad: int
    key: np.ndarray | None  # uint32 [2]: the caller's key for this prompt (sampling)
    beam: bool = False
    row_keys: np.ndarray | None = None  # uint32 [R, 2], set before admission
    next_sample: int = 0  # samples not yet admitted start here
    pending: int = 0  # samples admitted or waiting, not yet finished
    tokens: np.ndarray | None = None  # int32 [R, N] (pad after the end), N = max_new
    token_logprobs: np.ndarray | None = None  # f32 [R, N]
    top_ids: np.ndarray | None = None  # int32 [R, N, k]
    top_logprobs: np.ndarray | None = None  # f32 [R, N, k]
    num_generated: np.ndarray | None = None  # int32 [R]
    nonfinite: np.ndarray | None = None  # int32 [R]

    @property
    def samples(self) -> int:
        return self.config.num_return_sequences if self.config.do_sample else 1

    @property
    def bucket(self) -> int:
        return bucket(len(self.prompt))

    def allocate(self) -> None:
        r, n, k = self.samples, self.max_new, self.config.top_logprobs
        self.pending = r
        self.tokens = np.full((r, n), self.pad, np.int32)
        self.token_logprobs = np.zeros((r, n), np.float32)
        self.top_ids = np.full((r, n, k), -1, np.int32)
        self.top_logprobs = np.zeros((r, n, k), np.float32)
        self.num_generated = np.zeros((r,), np.int32)
        self.nonfinite = np.full((r,), -1, np.int32)


def _listify(x: Any, n: int, what: str) -> list:
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise ValueError(f"{what}: got {len(x)} for {n} prompts; give one per prompt.")
        return list(x)
    return [x] * n


def _per_prompt_keys(keys: Any, n: int) -> list:
    """One key (or None) per prompt: a list of keys, typed keys of shape [n], or uint32 key data [n, 2]."""
    if keys is None or isinstance(keys, (list, tuple)):
        return _listify(keys, n, "keys")
    data, single = _key_data(keys, n)
    if single and n > 1:
        raise ValueError(f"keys holds one key for {n} prompts; give one key per prompt "
                         "(e.g. jax.random.split(key, len(prompts))).")
    return list(data)


def prepare(model: Model, prompts: Sequence[Any], configs: Any, keys: Any, overrides: dict[str, Any],
            tokenizer, caps: dict[str, int | None]) -> list[Request]:
    """Check every request before anything runs; a bad one raises ``ValueError`` naming its index.

    ``caps``: ``top_logprobs`` and ``eos`` (hard limits), ``prompt`` / ``new`` (None: no limit, the engine grows).
    """
    if isinstance(prompts, (str, np.ndarray)) or not isinstance(prompts, Sequence):
        raise ValueError("prompts must be a list of prompts (token-id lists or strings), one entry per request.")
    n = len(prompts)
    if n == 0:
        raise ValueError("no prompts given.")
    if isinstance(configs, (list, tuple)) and len(configs) != n:
        raise ValueError(f"configs: got {len(configs)} for {n} prompts; give one GenerationConfig, or one per prompt.")
    configs = _listify(configs, n, "configs")
    key_list = _per_prompt_keys(keys, n)
    out = []
    for i, (p, c, key) in enumerate(zip(prompts, configs, key_list)):
        try:
            out.append(_request(model, i, p, c, key, overrides, tokenizer, caps))
        except ValueError as e:
            raise type(e)(f"request {i}: {e}") from e
    return out


# GenerationConfig fields the engine's compiled programs do not apply per slot.
# (min_length, presence_penalty and frequency_penalty are per-slot values.)
GENERATE_ONLY = ("no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "sequence_bias", "typical_p", "epsilon_cutoff", "eta_cutoff", "exponential_decay_length_penalty",
                 "forced_bos_token_id", "forced_eos_token_id", "renormalize_logits", "stop_strings")


def generate_only_options(cfg: GenerationConfig) -> list[str]:
    """The fields of ``cfg`` that are set to something the engine would not apply (they route to generate)."""
    default = GenerationConfig()
    return [f for f in GENERATE_ONLY if hasattr(cfg, f) and getattr(cfg, f) != getattr(default, f)]


def _request(model: Model, i: int, prompt: Any, config: Any, key: Any, overrides: dict[str, Any], tokenizer,
             caps: dict[str, int | None]) -> Request:
    if isinstance(prompt, str):
        from jaxgen.text.tokenizer import encode_prompts

        prompt = encode_prompts(tokenizer(), [prompt])[0]
    cfg = resolve_config(model, config, overrides)
    ids, _ = check_tokens(model.config, np.asarray(prompt)[None] if np.ndim(prompt) == 1 else prompt, None,
                          left_padded=True)
    if ids.shape[0] != 1:
        raise ValueError(f"a prompt must be one list of token ids, got shape {ids.shape}.")
    t = ids.shape[1]
    max_new = cfg.max_new_tokens if cfg.max_new_tokens is not None else cfg.max_length - t
    if max_new < 1:
        raise ValueError(f"max_length={cfg.max_length} leaves no room after a prompt of {t} tokens; set "
                         "max_new_tokens instead.")
    check_context(model.config, t, max_new)
    pad = cfg.pad_token_id
    if pad is None:
        pad = cfg.eos_token_ids[0] if cfg.eos_token_ids else 0
    # Beam search, and the options the per-slot programs do not carry, run through jaxgen.generate alone (the same
    # result a request gets there by definition): never a silently dropped setting.
    beam = cfg.num_beams > 1 or bool(generate_only_options(cfg))
    req = Request(index=i, prompt=ids[0], config=cfg, max_new=max_new, pad=int(pad), key=None, beam=beam)
    if beam:  # routed to jaxgen.generate as is
        return req
    if cfg.top_logprobs > caps["top_logprobs"]:
        raise ValueError(f"top_logprobs={cfg.top_logprobs} is above the engine's cap of {caps['top_logprobs']}; "
                         f"build the engine with Engine(model, max_slots, max_top_logprobs={cfg.top_logprobs}).")
    if len(cfg.eos_token_ids) > caps["eos"]:
        raise ValueError(f"{len(cfg.eos_token_ids)} EOS ids is above the engine's cap of {caps['eos']}; build it "
                         f"with max_eos_tokens={len(cfg.eos_token_ids)}.")
    if caps["prompt"] is not None and req.bucket > caps["prompt"]:
        raise ValueError(f"a prompt of {t} tokens (bucket {req.bucket}) is above the engine's max_prompt_length "
                         f"bucket {caps['prompt']}.")
    if caps["new"] is not None and max_new > caps["new"]:
        raise ValueError(f"max_new_tokens={max_new} is above the engine's max_new_tokens={caps['new']}.")
    if cfg.do_sample:
        if key is None:
            raise ValueError("do_sample=True needs a key: pass keys=[jax.random.key(seed), ...], one per prompt.")
        data, single = _key_data(key, 1)
        req.key = data[0]
    return req


@dataclasses.dataclass
class Admission:
    """One prefill group: ``samples`` of ``request`` go to ``slots`` (the first is prefilled, the rest copied)."""

    request: Request
    samples: list[int]
    slots: list[int]


class SlotTable:
    """Which request sample occupies each slot, and FIFO admission into free slots."""

    def __init__(self, slots: int):
        self.size = slots
        self.owner: list[tuple[Request, int] | None] = [None] * slots

    @property
    def free(self) -> list[int]:
        return [s for s, o in enumerate(self.owner) if o is None]

    @property
    def busy(self) -> int:
        return self.size - len(self.free)

    def group_size(self, req: Request) -> int:
        """Slots the request's next group needs: all its remaining samples at once (one shared prefill), at
        most every slot."""
        return min(req.samples - req.next_sample, self.size)

    def plan(self, queue: deque) -> list[Admission]:
        """Admit requests from the head of ``queue`` while their next group fits in the free slots."""
        free = self.free
        out = []
        while queue and free:
            req = queue[0]
            g = self.group_size(req)
            if g > len(free):
                break
            slots, free = free[:g], free[g:]
            samples = list(range(req.next_sample, req.next_sample + g))
            req.next_sample += g
            for s, j in zip(slots, samples):
                self.owner[s] = (req, j)
            out.append(Admission(req, samples, slots))
            if req.next_sample == req.samples:
                queue.popleft()
        return out

    def need(self, queue: deque) -> int:
        """How many rows must finish before the head of ``queue`` can be admitted (a large number: none waits)."""
        if not queue:
            return 2**30
        return max(1, self.group_size(queue[0]) - len(self.free))
