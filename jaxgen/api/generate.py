"""Host-side generation API: checks inputs, pads to shape buckets, calls the one compiled decoding program."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxgen.cache import init_cache
from jaxgen.decode import processors as P
from jaxgen.decode.beam import beam_search
from jaxgen.decode.loop import DecodeParams, DecodeSpec, decode
from jaxgen.decode.sampling import as_typed_keys
from jaxgen.api.generation_config import GenerationConfig
from jaxgen.model import Model, make_step
from jaxgen.api.outputs import GenerationOutput
from jaxgen.decode.streaming import Streamer, streaming_to

MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """Static size used for a dynamic length ``n``: the next power of two, at least ``minimum``."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def default_generation_config(model: Model) -> GenerationConfig:
    """The model's ``generation_config.json`` (else transformers' defaults), with ids from ``config.json``."""
    base = dict(model.generation_config or {})
    cfg = model.config
    if base.get("eos_token_id") is None and cfg.eos_token_id:
        base["eos_token_id"] = cfg.eos_token_id if len(cfg.eos_token_id) > 1 else cfg.eos_token_id[0]
    for name in ("pad_token_id", "bos_token_id"):
        if base.get(name) is None and getattr(cfg, name) is not None:
            base[name] = getattr(cfg, name)
    return GenerationConfig.from_dict(base)


def _check_inputs(model: Model, input_ids: Any, attention_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be an integer array [batch, length], got dtype {ids.dtype} shape "
                         f"{ids.shape}.")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {ids.shape}); give at least one prompt token per row.")
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}.")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (token).")
    mask = mask.astype(np.int32)
    if (mask.sum(axis=1) == 0).any():
        rows = np.flatnonzero(mask.sum(axis=1) == 0).tolist()
        raise ValueError(f"attention_mask rows {rows} have no tokens: every prompt needs at least one token.")
    if (np.diff(mask, axis=1) < 0).any():
        raise ValueError("attention_mask has padding after tokens: jaxgen expects left padding (pad at the start "
                         "of each row), as transformers' generate does for decoder-only models.")
    vocab = model.config.vocab_size
    real = ids[mask == 1]
    if real.size and (real.min() < 0 or real.max() >= vocab):
        raise ValueError(f"input_ids has token ids outside [0, vocab_size={vocab}).")
    return ids.astype(np.int32), mask


def _row_keys(key: Any, batch: int, num_return: int, do_sample: bool) -> Array | None:
    if not do_sample:
        return None
    if key is None:
        raise ValueError("do_sample=True needs key=jax.random.key(seed) (one key, or one per prompt row).")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    try:
        keys = as_typed_keys(key)
    except Exception as e:  # wrap_key_data rejects shapes/dtypes that are not key data
        raise ValueError(f"key must be a jax.random.key (shape () or [{batch}]) or legacy uint32 key data "
                         f"(shape [2] or [{batch}, 2]); got dtype {key.dtype} shape {key.shape}.") from e
    if keys.shape == ():
        # One key: it is the row's own key for a single prompt, else split into one key per row.
        keys = keys[None] if batch == 1 else jax.random.split(keys, batch)
    elif keys.shape != (batch,):
        raise ValueError(f"key has shape {keys.shape}: pass one key (shape ()) or one per prompt row "
                         f"(shape ({batch},)).")
    if num_return > 1:
        keys = jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(num_return)))(keys)
        keys = keys.reshape(batch * num_return)
    return keys


def resolve_config(model: Model, config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    base = config if config is not None else default_generation_config(model)
    if not isinstance(base, GenerationConfig):
        raise ValueError(f"config must be a jaxgen.GenerationConfig, got {type(base).__name__}.")
    cfg = base.replace(**overrides) if overrides else base
    if isinstance(cfg.eos_token_id, list):
        cfg = cfg.replace(eos_token_id=tuple(cfg.eos_token_id))
    cfg.validate(model.config.vocab_size)
    return cfg


@dataclasses.dataclass(frozen=True)
class _Call:
    """A checked, bucketed call of the compiled program and what is needed to shape its results."""

    args: tuple
    config: GenerationConfig
    prompt: np.ndarray  # int32 [B*R, T]: the caller's prompt rows, repeated per returned sequence
    max_new: int
    keys: Array | None
    stream: bool


def _prepare(model: Model, input_ids: Any, attention_mask: Any, config: GenerationConfig | None, key: Any,
             overrides: dict[str, Any], streaming: bool = False, stream_every: int = 8) -> _Call:
    """Everything host-side: validation (before anything compiles), padding to buckets, static/traced split."""
    cfg = resolve_config(model, config, overrides)
    ids, mask = _check_inputs(model, input_ids, attention_mask)
    b, t = ids.shape
    max_new = cfg.max_new_tokens if cfg.max_new_tokens is not None else cfg.max_length - t
    if max_new < 1:
        raise ValueError(f"max_length={cfg.max_length} leaves no room after a prompt of {t} tokens; set "
                         "max_new_tokens instead.")
    context = model.config.max_position_embeddings
    longest = int(mask.sum(axis=1).max())
    if longest > context:
        raise ValueError(f"a prompt has {longest} tokens, longer than the model's context "
                         f"(max_position_embeddings={context}); shorten it.")
    pad = cfg.pad_token_id
    if pad is None:
        if (mask == 0).any():
            raise ValueError("the batch is padded but pad_token_id is not set: pass pad_token_id=... (often the "
                             "tokenizer's pad or EOS id).")
        pad = cfg.eos_token_ids[0] if cfg.eos_token_ids else 0
    if not isinstance(stream_every, int) or stream_every < 1:
        raise ValueError(f"stream_every={stream_every!r} is invalid: must be an integer >= 1.")
    r = cfg.num_return_sequences
    keys = _row_keys(key, b, r, cfg.do_sample)
    beam = cfg.num_beams > 1
    if cfg.do_sample and r > 1:
        ids, mask = np.repeat(ids, r, axis=0), np.repeat(mask, r, axis=0)

    # Shape buckets: extra left padding (masked) and a longer output buffer (the traced limit stops the loop).
    tb, nb = bucket(t), bucket(max_new)
    ids_b = np.full((ids.shape[0], tb), pad, np.int32)
    mask_b = np.zeros((ids.shape[0], tb), np.int32)
    ids_b[:, tb - t:], mask_b[:, tb - t:] = ids, mask

    do_sample = cfg.do_sample
    plan = P.ProcessorPlan(
        repetition_penalty=cfg.repetition_penalty != 1.0,
        min_new_tokens=cfg.min_new_tokens > 0 and bool(cfg.eos_token_ids),
        eos_token_ids=cfg.eos_token_ids,
        temperature=do_sample and cfg.temperature != 1.0,
        top_k=do_sample and cfg.top_k != 0,
        top_p=do_sample and cfg.top_p < 1.0,
        min_p=do_sample and cfg.min_p is not None,
        top_k_candidates=P.candidate_count(cfg.top_k, model.config.vocab_size) if do_sample else 0,
    )
    stream = streaming and not beam
    # Sampling repeats the prompt rows on the host, so R only shapes beam search's output inside the program;
    # keeping it out of the sampling spec lets B prompts x R returns reuse the program compiled for B*R rows.
    spec = DecodeSpec(max_new_tokens=nb, do_sample=do_sample, num_beams=cfg.num_beams,
                      num_return_sequences=r if beam else 1,
                      top_logprobs=cfg.top_logprobs, logprobs_mode=cfg.logprobs_mode,
                      early_stopping=cfg.early_stopping if beam else False, plan=plan,
                      stream_every=stream_every if stream else 0)
    dp = DecodeParams(
        processors=P.ProcessorParams(
            temperature=jnp.float32(cfg.temperature), top_k=jnp.int32(min(cfg.top_k, model.config.vocab_size)),
            top_p=jnp.float32(cfg.top_p), min_p=jnp.float32(cfg.min_p or 0.0),
            repetition_penalty=jnp.float32(cfg.repetition_penalty), min_new_tokens=jnp.int32(cfg.min_new_tokens)),
        max_new_tokens=jnp.int32(max_new), pad_token_id=jnp.int32(pad), length_penalty=jnp.float32(cfg.length_penalty))

    ids_d, mask_d, cache_sharding = jnp.asarray(ids_b), jnp.asarray(mask_b), None
    if model.mesh is not None:  # batch rows over the mesh's data axis; parameters already carry their shardings
        from jaxgen.parallel import sharding as S

        from jaxgen.parallel.distributed import global_array

        S.check_batch(model.mesh, ids_b.shape[0])
        ids_d, mask_d = (global_array(x, S.batch_sharding(model.mesh)) for x in (ids_b, mask_b))
        if keys is not None:
            key_data = np.asarray(jax.random.key_data(keys))
            keys = jax.random.wrap_key_data(global_array(key_data, S.batch_sharding(model.mesh)))
        cache_sharding = S.cache_sharding(model.config, model.mesh)
    args = (model.graphdef, model.config, model.dtype.name, spec, cache_sharding, model.params, ids_d, mask_d, keys,
            dp)
    return _Call(args=args, config=cfg, prompt=np.repeat(ids, r, axis=0) if beam else ids, max_new=max_new,
                 keys=keys, stream=stream)


def generate(model: Model, input_ids: Any, attention_mask: Any = None, config: GenerationConfig | None = None,
             key: Any = None, *, streamer: Streamer | None = None, stream_every: int = 8,
             **overrides: Any) -> GenerationOutput:
    """Generate continuations of left-padded ``input_ids`` int32 ``[B, T]`` with one compiled program.

    ``config`` defaults to the model's ``generation_config.json`` (else transformers' defaults); keyword
    ``overrides`` (``max_new_tokens=32, do_sample=True, ...``) apply on top. ``key``: one PRNG key or one per row,
    needed only for sampling. Same inputs and key give bit-identical outputs. See :class:`GenerationOutput`.

    ``streamer(tokens[B', N], num_steps, done[B'])`` (greedy/sampling) receives the new tokens every
    ``stream_every`` steps from inside the compiled loop (rows in call order; only the first ``num_steps``
    columns are filled).
    """
    call = _prepare(model, input_ids, attention_mask, config, key, overrides, streamer is not None, stream_every)
    with streaming_to(streamer if call.stream else None):
        res = jax.block_until_ready(_compiled(*call.args))
    if jax.process_count() > 1:  # results span hosts: every process gets the full arrays (process 0 writes them)
        from jaxgen.parallel.distributed import fetch

        res = fetch(res)
    n = call.max_new
    return GenerationOutput(
        sequences=jnp.concatenate([jnp.asarray(call.prompt), res["tokens"][:, :n]], axis=1),
        token_logprobs=res["token_logprobs"][:, :n],
        top_token_ids=res["top_ids"][:, :n],
        top_logprobs=res["top_logprobs"][:, :n],
        num_generated=res["num_generated"],
        sequences_scores=res.get("sequences_scores"),
        keys=None if call.keys is None else jax.random.key_data(call.keys),
        prompt_length=call.prompt.shape[1], config=call.config)


def compile_count() -> int:
    """How many decoding programs have been compiled in this process (a recompilation guard for tests/benchmarks)."""
    return _compiled._cache_size()


def lower(model: Model, input_ids: Any, attention_mask: Any = None, config: GenerationConfig | None = None,
          key: Any = None, **overrides: Any) -> jax.stages.Lowered:
    """The compiled program ``generate`` would run for these arguments, lowered (``.compile()``, ``.as_text()``,
    ``.compile().input_shardings``) — for inspecting shardings and compile cost without running it."""
    return _compiled.lower(*_prepare(model, input_ids, attention_mask, config, key, overrides).args)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "dtype", "spec", "cache_sharding"))
def _compiled(graphdef, config, dtype: str, spec: DecodeSpec, cache_sharding, params, input_ids, mask, keys,
              dp: DecodeParams) -> dict[str, Array]:
    """Prefill + decode loop (greedy, sampling or beam search) as one program; the cache lives inside it."""
    step = make_step(graphdef)
    b, t = input_ids.shape
    cache = init_cache(config, b, t + spec.max_new_tokens, jnp.dtype(dtype))
    if cache_sharding is not None:
        cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
    if spec.num_beams == 1:
        s = decode(step, params, input_ids, mask, keys, cache, spec, dp)
        return dict(tokens=s.tokens, token_logprobs=s.token_logprobs, top_ids=s.top_ids,
                    top_logprobs=s.top_logprobs, num_generated=s.num_generated)
    s = beam_search(step, params, input_ids, mask, cache, spec, dp)
    r = spec.num_return_sequences
    flat = lambda x: x[:, :r].reshape((b * r,) + x.shape[2:])
    return dict(tokens=flat(s.finished.tokens), token_logprobs=flat(s.finished.token_logprobs),
                top_ids=flat(s.finished.top_ids), top_logprobs=flat(s.finished.top_logprobs),
                num_generated=flat(s.finished_lengths), sequences_scores=flat(s.finished_scores))
