"""``Engine``: many prompts at once with continuous batching, shared prefills and per-request settings.

    engine = jaxgen.Engine(model, max_slots=32)
    outs = engine.generate(prompts, configs, keys=keys)        # outs[i]: as jaxgen.generate(model, [prompts[i]], ...)
    for i, out in engine.stream(prompts, configs, keys=keys):  # in completion order
        ...

A request's result does not depend on ``max_slots``, on the other requests or on the scheduling order: each slot
decodes with its own key, positions and settings, and attention over the slots of other requests is masked out
(exact zeros). Logprobs match ``jaxgen.generate`` to float rounding (different batch and cache shapes sum in a
different order), tokens exactly except at a float tie.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from jaxgen.api.extra_options import effective_min_new_tokens
from jaxgen.api.generate import generate
from jaxgen.api.generation_config import GenerationConfig
from jaxgen.api.inputs import available_bytes, bucket, to_device
from jaxgen.api.outputs import GenerationOutput
from jaxgen.decode import processors as P
from jaxgen.engine import step as E
from jaxgen.engine.scheduler import Request, SlotTable, prepare
from jaxgen.errors import NonFiniteLogitsError
from jaxgen.model import Model
from jaxgen.x64 import iterate_x64_off, x64_off

__all__ = ["Engine"]

Callback = Callable[[int, GenerationOutput], None]


class Engine:
    """Continuous-batching generation over ``max_slots`` rows of one persistent KV cache.

    ``max_top_logprobs``: the largest ``top_logprobs`` a request may ask for; ``max_eos_tokens``: the most EOS ids
    per request. ``max_prompt_length`` / ``max_new_tokens``: the cache's caps (prompt bucket ``P``, new tokens
    ``M``; capacity ``P + 2M``); left None, the first call's buckets set them and a later call that needs more
    grows them (a new state, compiled once). ``chunk_steps``: decoding steps per compiled call between host
    visits; ``max_prefill_rows``: most prompts prefilled together; ``top_k_candidates``: the sampling filters'
    candidate count (default: the one ``jaxgen.generate`` uses for the model's default ``top_k``).
    ``schedule``: "longest_first" (admit the largest ``max_new_tokens`` first, so the last slots busy are not a
    few long requests: ~98% of slot-steps useful against ~87% in arrival order, see benchmarks/bench_engine.py)
    or "fifo" (arrival order). Results never depend on it, only when each request finishes.

    The programs are jitted per (model, spec), so engines of the same model and slot count share them.
    """

    @x64_off
    def __init__(self, model: Model, max_slots: int = 32, *, max_top_logprobs: int = 20, max_eos_tokens: int = 8,
                 max_prompt_length: int | None = None, max_new_tokens: int | None = None, chunk_steps: int = 32,
                 max_prefill_rows: int = 8, top_k_candidates: int | None = None, schedule: str = "longest_first"):
        for name, v, low in (("max_slots", max_slots, 1), ("max_top_logprobs", max_top_logprobs, 0),
                             ("max_eos_tokens", max_eos_tokens, 1), ("chunk_steps", chunk_steps, 1),
                             ("max_prefill_rows", max_prefill_rows, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}={v!r} is invalid: must be an integer >= {low}.")
        if schedule not in ("longest_first", "fifo"):
            raise ValueError(f'schedule={schedule!r} is invalid: "longest_first" or "fifo".')
        self.schedule = schedule
        vocab = model.config.vocab_size
        if max_top_logprobs > vocab:
            raise ValueError(f"max_top_logprobs={max_top_logprobs} is above vocab_size={vocab}.")
        data = 1 if model.mesh is None else model.mesh.shape["data"]
        if max_slots % data:
            raise ValueError(f"max_slots={max_slots} does not divide over the mesh's data axis ({data}); use a "
                             f"multiple of {data}.")
        self.model = model
        self.slots = max_slots
        self.chunk_steps = chunk_steps
        self.max_prefill_rows = min(max_prefill_rows, max_slots)
        if top_k_candidates is None:
            from jaxgen.api.generate import default_generation_config

            top_k_candidates = P.candidate_count(default_generation_config(model).top_k or 50, vocab)
        self._fixed = dict(prompt=None if max_prompt_length is None else bucket(max_prompt_length),
                           new=max_new_tokens)
        self._caps = dict(top_logprobs=max_top_logprobs, eos=max_eos_tokens)
        self._candidates = top_k_candidates
        self.spec: E.EngineSpec | None = None
        self._state: E.SlotState | None = None
        self._tokenizer = None
        self._running = False
        self.stats: dict[str, int] = {}
        if max_prompt_length is not None and max_new_tokens is not None:
            self._ensure(self._fixed["prompt"], bucket(max_new_tokens))

    # ------------------------------------------------------------------------------------------- public API

    @x64_off
    def generate(self, prompts: Sequence[Any], configs: GenerationConfig | Sequence[GenerationConfig] | None = None,
                 keys: Any = None, *, callback: Callback | None = None, progress: bool = False,
                 **overrides: Any) -> list[GenerationOutput]:
        """One :class:`GenerationOutput` per prompt, in prompt order. ``configs``: one for all or one per prompt
        (None: the model's generation config); ``keys``: one PRNG key per prompt (needed for sampling);
        ``overrides`` apply to every config. ``callback(index, output)`` is called as each request finishes."""
        outs: list[GenerationOutput | None] = [None] * len(prompts) if isinstance(prompts, Sequence) else []
        for i, out in self.stream(prompts, configs, keys, progress=progress, **overrides):
            outs[i] = out
            if callback is not None:
                callback(i, out)
        return outs

    @x64_off
    def stream(self, prompts: Sequence[Any], configs: GenerationConfig | Sequence[GenerationConfig] | None = None,
               keys: Any = None, *, progress: bool = False, **overrides: Any) -> Iterator[tuple[int, GenerationOutput]]:
        """``(index, GenerationOutput)`` pairs in completion order. Every request is checked here, before
        anything runs (a bad one raises ``ValueError``); beam-search requests go to ``jaxgen.generate`` after
        the others."""
        caps = dict(self._caps, **self._fixed)
        requests = prepare(self.model, prompts, configs, keys, overrides, self._load_tokenizer, caps)
        return iterate_x64_off(self._run(requests, progress))

    @x64_off
    def warmup(self, prompt_buckets: Sequence[int] | None = None) -> None:
        """Compile every program the engine can run for its caps (all prefill widths and buckets, copies, both
        decode variants), so no later call compiles; needs the caps (``max_prompt_length``, ``max_new_tokens``)."""
        if self.spec is None:
            raise ValueError("warmup needs the caps: build the engine with max_prompt_length and max_new_tokens.")
        spec = self.spec
        buckets = prompt_buckets or [b for b in (16 << i for i in range(32)) if b <= spec.prompt_cap]
        for length in buckets:
            for k in self._row_buckets(self.max_prefill_rows):
                ids = np.zeros((k, length), np.int32)
                self._state = E.admit(*self._static(), self.model.params, self._state, ids, ids,
                                      np.full((k,), spec.slots, np.int32))
        for t in self._row_buckets(spec.slots):
            filler = np.full((t,), spec.slots, np.int32)
            self._state = E.copy(spec, self._shardings, self._state, filler, filler)
        for with_top in (False, True):
            self._state, _ = E.decode_chunk(*self._static(), with_top, self.model.params, self._state,
                                            self._settings(SlotTable(spec.slots)), np.int32(0), np.int32(1))
        self._state = E.shift(spec, self._shardings, self._state)
        self._reset_index()
        E.derive_keys(*self._key_args([]))

    # ------------------------------------------------------------------------------------------- internals

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from jaxgen.text.tokenizer import TokenizerError, load_tokenizer

            if self.model.path is None:
                raise TokenizerError("text prompts need the model's tokenizer, but the model has no folder "
                                     "(model.path); give token ids.")
            self._tokenizer = load_tokenizer(self.model.path)
        return self._tokenizer

    @staticmethod
    def _row_buckets(limit: int) -> list[int]:
        out, k = [], 1
        while k < limit:
            out.append(k)
            k *= 2
        return out + [limit]

    @staticmethod
    def _rows_bucket(n: int, limit: int) -> int:
        return min(limit, bucket(n, 1))

    def _static(self) -> tuple:
        m = self.model
        return (m.graphdef, m.config, m.dtype.name, self.spec, self._shardings)

    def _ensure(self, prompt_cap: int, new_cap: int) -> None:
        """A state with at least these caps (a new one only when they grow)."""
        if self.spec is not None and prompt_cap <= self.spec.prompt_cap and new_cap <= self.spec.new_cap:
            return
        if self.spec is not None:
            prompt_cap, new_cap = max(prompt_cap, self.spec.prompt_cap), max(new_cap, self.spec.new_cap)
        spec = E.EngineSpec(slots=self.slots, prompt_cap=prompt_cap, new_cap=new_cap,
                            top_logprobs=self._caps["top_logprobs"], num_eos=self._caps["eos"],
                            candidates=self._candidates)
        self._check_memory(spec)
        self._shardings = self._make_shardings(spec)
        self._state = None  # free the old state before allocating the new one
        self.spec = spec
        self._state = E.init_state(self.model.config, self.model.dtype.name, spec, self._shardings)

    def _check_memory(self, spec: E.EngineSpec) -> None:
        cfg = self.model.config
        kv = 2 * cfg.num_hidden_layers * spec.slots * cfg.num_key_value_heads * spec.capacity * cfg.head_dim
        need = (kv * self.model.dtype.itemsize + spec.slots * (spec.capacity + 9 * cfg.vocab_size)
                + spec.slots * spec.new_cap * (8 + 8 * spec.top_logprobs))
        free = available_bytes()
        if free is not None and need > free:
            raise ValueError(f"an engine of {spec.slots} slots x {spec.capacity} cache slots needs "
                             f"{need / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB is free; use fewer max_slots or "
                             "smaller max_prompt_length / max_new_tokens.")

    def _make_shardings(self, spec: E.EngineSpec):
        mesh = self.model.mesh
        if mesh is None:
            return None
        from jaxgen.parallel import sharding as S

        rows = lambda ndim: S.batch_sharding(mesh, ndim)
        return E.SlotState(cache=S.cache_sharding(self.model.config, mesh), logits=rows(2), seen=rows(2),
                           counts=rows(2), positions=rows(1), steps=rows(1), live=rows(1), start=rows(1),
                           nonfinite=rows(1), tokens=rows(2), token_logprobs=rows(2), top_ids=rows(3),
                           top_logprobs=rows(3))

    def _reset_index(self) -> None:
        self._state = E.restart(self.spec, self._shardings, self._state)

    def _key_args(self, rows: list[tuple[np.ndarray, int, bool]]) -> tuple[np.ndarray, ...]:
        """Fixed-size (``max_slots``) inputs of ``derive_keys`` for ``rows`` of (key data, sample, fold)."""
        s = self.slots
        data, ret, fold = np.zeros((s, 2), np.uint32), np.zeros((s,), np.int32), np.zeros((s,), bool)
        for i, (d, r, f) in enumerate(rows):
            data[i], ret[i], fold[i] = d, r, f
        return data, ret, fold

    def _derive_row_keys(self, requests: list[Request]) -> None:
        rows = [(r, j) for r in requests if r.config.do_sample for j in range(r.samples)]
        for r in requests:
            if r.config.do_sample:
                r.row_keys = np.zeros((r.samples, 2), np.uint32)
        for at in range(0, len(rows), self.slots):
            part = rows[at:at + self.slots]
            args = self._key_args([(r.key, j, r.samples > 1) for r, j in part])
            derived = np.array(E.derive_keys(*args))
            for i, (r, j) in enumerate(part):
                r.row_keys[j] = derived[i]

    def _settings(self, table: SlotTable) -> E.SlotSettings:
        """Per-slot traced settings from the slot table (idle slots: no-op values that keep the fast paths)."""
        s, spec, vocab = self.slots, self.spec, self.model.config.vocab_size
        f32, i32 = np.float32, np.int32
        temperature, top_p, min_p, rep = (np.ones(s, f32), np.ones(s, f32), np.zeros(s, f32), np.ones(s, f32))
        top_k, min_new, max_new = np.ones(s, i32), np.zeros(s, i32), np.ones(s, i32)
        presence, frequency = np.zeros(s, f32), np.zeros(s, f32)
        do_sample, processed = np.zeros(s, bool), np.zeros(s, bool)
        eos = np.full((s, spec.num_eos), vocab, i32)
        keys = np.zeros((s, 2), np.uint32)
        for slot, owner in enumerate(table.owner):
            if owner is None:
                continue
            req, j = owner
            c = req.config
            rep[slot], max_new[slot] = c.repetition_penalty, req.max_new
            min_new[slot] = effective_min_new_tokens(c, len(req.prompt))  # min_length as generate counts it
            presence[slot], frequency[slot] = c.presence_penalty, c.frequency_penalty
            processed[slot] = c.logprobs_mode == "processed"
            eos[slot, :len(c.eos_token_ids)] = c.eos_token_ids
            if c.do_sample:
                do_sample[slot] = True
                temperature[slot], top_p[slot], min_p[slot] = c.temperature, c.top_p, c.min_p or 0.0
                top_k[slot] = min(c.top_k, vocab)
                keys[slot] = req.row_keys[j]
        return E.SlotSettings(
            processors=P.ProcessorParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                         repetition_penalty=rep, min_new_tokens=min_new),
            do_sample=do_sample, processed=processed, max_new=max_new, presence=presence, frequency=frequency,
            eos=eos, keys=keys)

    def _admit(self, table: SlotTable, queue: deque) -> None:
        groups = table.plan(queue)
        if not groups:
            return
        spec, s = self.spec, self.slots
        by_bucket: dict[int, list] = {}
        for g in groups:
            by_bucket.setdefault(g.request.bucket, []).append(g)
        for length, gs in sorted(by_bucket.items()):
            for at in range(0, len(gs), self.max_prefill_rows):
                part = gs[at:at + self.max_prefill_rows]
                k = self._rows_bucket(len(part), self.max_prefill_rows)
                ids = np.zeros((k, length), np.int32)
                mask = np.zeros((k, length), np.int32)
                slots = np.full((k,), s, np.int32)
                for i, g in enumerate(part):
                    p = g.request.prompt
                    ids[i, length - len(p):], mask[i, length - len(p):], slots[i] = p, 1, g.slots[0]
                self._state = E.admit(*self._static(), self.model.params, self._state, ids, mask, slots)
                self.stats["prefill_calls"] += 1
                self.stats["prefill_rows"] += len(part)
        copies = [(g.slots[0], d) for g in groups for d in g.slots[1:]]
        if copies:
            t = self._rows_bucket(len(copies), s)
            src, dst = np.zeros((t,), np.int32), np.full((t,), s, np.int32)
            for i, (a, b) in enumerate(copies):
                src[i], dst[i] = a, b
            self._state = E.copy(spec, self._shardings, self._state, src, dst)
            self.stats["copied_rows"] += len(copies)

    def _collect(self, table: SlotTable, live: np.ndarray, steps: np.ndarray, offset: np.ndarray) -> list[Request]:
        """Move finished rows' results into their requests; returns the requests now complete, in the order they
        completed (``offset``: each row's steps before this chunk, so ``steps - offset`` says when it ended)."""
        ended = [s for s, o in enumerate(table.owner) if o is not None and not live[s]]
        ended.sort(key=lambda s: (int(steps[s]) - int(offset[s]), s))
        if not ended:
            return []
        st = self._state
        host = {name: np.array(getattr(st, name)) for name in ("tokens", "token_logprobs", "nonfinite")}
        need_top = any(o[0].config.top_logprobs for s in ended for o in [table.owner[s]])
        if need_top:
            host["top_ids"], host["top_logprobs"] = np.array(st.top_ids), np.array(st.top_logprobs)
        done = []
        for s in ended:
            req, j = table.owner[s]
            table.owner[s] = None
            n, k = int(steps[s]), req.config.top_logprobs
            req.tokens[j, :n] = host["tokens"][s, :n]
            req.token_logprobs[j, :n] = host["token_logprobs"][s, :n]
            if k:
                req.top_ids[j, :n] = host["top_ids"][s, :n, :k]
                req.top_logprobs[j, :n] = host["top_logprobs"][s, :n, :k]
            req.num_generated[j] = n
            req.nonfinite[j] = host["nonfinite"][s]
            req.pending -= 1
            if req.pending == 0:
                done.append(req)
        return done

    def _run(self, requests: list[Request], progress: bool) -> Iterator[tuple[int, GenerationOutput]]:
        engine_requests = [r for r in requests if not r.beam]
        if engine_requests:
            fixed_p, fixed_n = self._fixed["prompt"], self._fixed["new"]
            self._ensure(fixed_p or max(r.bucket for r in engine_requests),
                         bucket(fixed_n or max(r.max_new for r in engine_requests)))
        self._derive_row_keys(engine_requests)
        return self._loop(requests, engine_requests, progress)

    def _loop(self, requests, engine_requests, progress) -> Iterator[tuple[int, GenerationOutput]]:
        if self._running:
            raise RuntimeError("this Engine is already running a call; use one engine per thread.")
        self._running = True
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc="jaxgen.Engine", unit="req")
        try:
            yield from self._decode(engine_requests, bar)
            for r in requests:
                if r.beam:
                    extra = dict(tokenizer=self._load_tokenizer()) if r.config.stop_strings else {}
                    out = generate(self.model, r.prompt[None], config=r.config, key=r.key, **extra)
                    if bar is not None:
                        bar.update(1)
                    yield r.index, out
        finally:
            self._running = False
            if bar is not None:
                bar.close()

    def _decode(self, requests: list[Request], bar) -> Iterator[tuple[int, GenerationOutput]]:
        if not requests:
            return
        self.stats = dict(chunks=0, decode_steps=0, slot_steps=0, useful_slot_steps=0, prefill_calls=0,
                          prefill_rows=0, copied_rows=0, shifts=0)
        for r in requests:
            r.allocate()
        self._reset_index()
        table = SlotTable(self.slots)
        queue = deque(sorted(requests, key=lambda r: -r.max_new) if self.schedule == "longest_first" else requests)
        spec = self.spec
        offset = np.zeros(self.slots, np.int64)  # each slot's steps before the current chunk
        while queue or table.busy:
            fresh = set(table.free)
            self._admit(table, queue)
            for s in fresh - set(table.free):
                offset[s] = 0
            with_top = any(o is not None and o[0].config.top_logprobs for o in table.owner)
            before = table.busy
            self._state, ran = E.decode_chunk(*self._static(), with_top, self.model.params, self._state,
                                              self._settings(table), np.int32(self.chunk_steps),
                                              np.int32(table.need(queue)))
            live, steps = np.array(self._state.live), np.array(self._state.steps)
            ran, index = int(ran), int(self._state.cache.index)
            self.stats["chunks"] += 1
            self.stats["decode_steps"] += ran
            self.stats["slot_steps"] += ran * self.slots
            for req in self._collect(table, live, steps, offset):
                self.stats["useful_slot_steps"] += int(req.num_generated.sum())
                if bar is not None:
                    bar.update(1)
                yield req.index, self._output(req)
            offset = steps.astype(np.int64)
            if index >= spec.capacity:
                self._state = E.shift(spec, self._shardings, self._state)
                self.stats["shifts"] += 1
            elif ran == 0 and before and table.busy == before:
                raise RuntimeError("engine made no progress (internal error).")

    def _output(self, req: Request) -> GenerationOutput:
        bad = np.flatnonzero(req.nonfinite >= 0)
        if bad.size:
            row, at = int(bad[0]), int(req.nonfinite[bad[0]])
            raise NonFiniteLogitsError(
                f"request {req.index}: the model's logits hold NaN or +inf at generation step {at} of sample "
                f"{row}: the weights contain NaN/inf, or {self.model.dtype.name} overflowed; check the checkpoint, "
                "or load with dtype='float32' or 'bfloat16'.", row=row, step=at)
        r = req.samples
        prompt = np.repeat(req.prompt[None], r, axis=0)
        return GenerationOutput(
            sequences=to_device(np.concatenate([prompt, req.tokens], axis=1)),
            token_logprobs=to_device(req.token_logprobs), top_token_ids=to_device(req.top_ids),
            top_logprobs=to_device(req.top_logprobs), num_generated=to_device(req.num_generated),
            sequences_scores=None, keys=to_device(req.row_keys) if req.row_keys is not None else None,
            prompt_length=len(req.prompt), config=req.config)
