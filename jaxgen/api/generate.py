"""Host-side generation API: checks inputs, pads to shape buckets, calls the one compiled decoding program."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxgen.api.extra_options import effective_min_new_tokens, extra_setup
from jaxgen.api.generation_config import GenerationConfig
from jaxgen.api.images import check_images, model_ids
from jaxgen.api.inputs import bucket, check_context, check_memory, check_tokens, model_tokens, to_device
from jaxgen.api.outputs import GenerationOutput
from jaxgen.cache import init_cache
from jaxgen.decode import processors as P
from jaxgen.decode import streaming
from jaxgen.decode.beam import beam_search
from jaxgen.decode.loop import DecodeParams, DecodeSpec, decode
from jaxgen.decode.streaming import Streamer
from jaxgen.errors import NonFiniteLogitsError
from jaxgen.model import Model, make_step
from jaxgen.nn.vision import ImageInputs
from jaxgen.x64 import x64_off

__all__ = ["compile_count", "default_generation_config", "generate", "lower", "resolve_config"]


def default_generation_config(model: Model) -> GenerationConfig:
    """The model's ``generation_config.json`` (else transformers' defaults), with ids from ``config.json``."""
    base = dict(model.generation_config or {})
    cfg = model.config
    if base.get("eos_token_id") is None and cfg.eos_token_id:
        base["eos_token_id"] = cfg.eos_token_id if len(cfg.eos_token_id) > 1 else cfg.eos_token_id[0]
    for name in ("pad_token_id", "bos_token_id"):
        if base.get(name) is None and getattr(cfg, name) is not None:
            base[name] = getattr(cfg, name)
    where = f"{model.path}/generation_config.json" if model.path else "the model's generation config"
    try:
        return GenerationConfig.from_dict(base, source=where)
    except ValueError as e:  # name the file the bad value came from
        raise ValueError(f"{where}: {e}") from e


def resolve_config(model: Model, config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    base = config if config is not None else default_generation_config(model)
    if not isinstance(base, GenerationConfig):
        raise ValueError(f"config must be a jaxgen.GenerationConfig, got {type(base).__name__}.")
    cfg = base.replace(**overrides) if overrides else base
    if isinstance(cfg.eos_token_id, list):
        cfg = cfg.replace(eos_token_id=tuple(cfg.eos_token_id))
    cfg.validate(model.config.vocab_size)
    return cfg


def bucket_rows(n: int, multiple: int = 1) -> int:
    """Static row count for ``n`` rows: a power of two up to 8, then a multiple of 8; and a multiple of
    ``multiple`` (the mesh's data axis), so every batch runs on every mesh."""
    rows = bucket(n, 1) if n <= 8 else -(-n // 8) * 8
    return -(-rows // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class KeyPlan:
    """Static: how the program derives per-row keys from the caller's key data."""

    fold_prompt: bool = False  # one key for several prompts: prompt i samples with fold_in(key, i)
    fold_return: bool = False  # num_return_sequences > 1: sample r of a prompt uses fold_in(prompt_key, r)


def _key_data(key: Any, batch: int) -> tuple[np.ndarray, bool]:
    """Key data ``uint32[K, 2]`` (K = 1 or ``batch``) from a typed key / legacy key data, and whether it is one key."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(key))
    else:
        data = np.asarray(key)
        if not (np.issubdtype(data.dtype, np.integer) and data.shape[-1:] == (2,)):
            raise ValueError(f"key must be a jax.random.key (shape () or [{batch}]) or legacy uint32 key data "
                             f"(shape [2] or [{batch}, 2]); got dtype {data.dtype} shape {data.shape}.")
        data = data.astype(np.uint32)
    if data.ndim == 1:
        return data[None], True
    if data.ndim != 2 or data.shape[0] != batch:
        raise ValueError(f"key has shape {data.shape[:-1]}: pass one key (shape ()) or one per prompt row "
                         f"(shape ({batch},)).")
    return data, False


@dataclasses.dataclass(frozen=True)
class _Call:
    """A checked, bucketed call of the compiled program and what is needed to shape its results."""

    args: tuple
    config: GenerationConfig
    prompt: np.ndarray  # int32 [B*R, T]: the caller's prompt rows, repeated per returned sequence
    rows: int  # B*R: real output rows (the program may run more, bucketed)
    max_new: int
    stream: bool


def _prepare(model: Model, input_ids: Any, attention_mask: Any, config: GenerationConfig | None, key: Any,
             overrides: dict[str, Any], streaming_on: bool = False, stream_every: int = 8,
             stream_id: int = 0, tokenizer: Any = None, image_args: dict[str, Any] | None = None) -> _Call:
    """Everything host-side, in numpy: validation (before anything compiles), padding to buckets, static/traced
    split. Nothing here runs a jax operation, so a call in a known bucket compiles nothing."""
    cfg = resolve_config(model, config, overrides)
    vision = model.config.vision
    ids, mask = check_tokens(model.config, input_ids, attention_mask, left_padded=True,
                             extra_ids=(vision.image_token_id,) if vision is not None else ())
    host_images = check_images(model.config, ids, mask, **(image_args or {}))
    b, t = ids.shape
    max_new = cfg.max_new_tokens if cfg.max_new_tokens is not None else cfg.max_length - t
    if max_new < 1:
        raise ValueError(f"max_length={cfg.max_length} leaves no room after a prompt of {t} tokens; set "
                         "max_new_tokens instead.")
    check_context(model.config, int(mask.sum(axis=1).max()), max_new)
    pad = cfg.pad_token_id
    if pad is None:
        if (mask == 0).any():
            raise ValueError("the batch is padded but pad_token_id is not set: pass pad_token_id=... (often the "
                             "tokenizer's pad or EOS id).")
        pad = cfg.eos_token_ids[0] if cfg.eos_token_ids else 0
    if isinstance(stream_every, np.integer):
        stream_every = int(stream_every)
    if not isinstance(stream_every, int) or isinstance(stream_every, bool) or stream_every < 1:
        raise ValueError(f"stream_every={stream_every!r} is invalid: must be an integer >= 1.")
    r = cfg.num_return_sequences
    beam = cfg.num_beams > 1
    do_sample = cfg.do_sample
    key_data, single = (None, False)
    if do_sample:
        if key is None:
            raise ValueError("do_sample=True needs key=jax.random.key(seed) (one key, or one per prompt row).")
        key_data, single = _key_data(key, b)
    if do_sample and r > 1:
        ids, mask = np.repeat(ids, r, axis=0), np.repeat(mask, r, axis=0)
        if host_images is not None:
            host_images = host_images.rows(np.repeat(np.arange(b), r))
    rows = ids.shape[0]  # B*R for sampling, B for greedy and beam search (beams expand inside)

    # Shape buckets: extra left padding (masked), a longer output buffer (the traced limit stops the loop), and
    # extra rows (copies of row 0, dropped from the results) so batch sizes share programs and split over meshes.
    data = 1 if model.mesh is None else model.mesh.shape["data"]
    tb, nb, rb = bucket(t), bucket(max_new), bucket_rows(rows, data)
    check_memory(model.config, rb, tb, max_new, itemsize=model.dtype.itemsize, top_logprobs=cfg.top_logprobs,
                 num_beams=cfg.num_beams, num_eos=len(cfg.eos_token_ids))
    ids_b = np.zeros((rb, tb), np.int32)  # padding holds token 0, a valid id whatever pad_token_id is
    mask_b = np.zeros((rb, tb), np.int32)
    ids_b[:rows, tb - t:], mask_b[:rows, tb - t:] = model_tokens(model_ids(model.config, ids, host_images), mask), mask
    ids_b[rows:], mask_b[rows:] = ids_b[0], mask_b[0]
    images = None
    if host_images is not None:
        hi = host_images.padded(rb, tb)
        images = ImageInputs(pixel_values=hi.pixel_values, slots=hi.slots, blocks=hi.blocks,
                             target_sizes=hi.target_sizes)

    keys = None
    key_plan = KeyPlan()
    if do_sample:
        prompt_of = np.minimum(np.arange(rb) // r, b - 1)  # dummy rows reuse the last prompt's key
        keys = dict(data=key_data[np.zeros(rb, np.int64) if single else prompt_of], prompt=prompt_of.astype(np.int32),
                    ret=(np.arange(rb) % r).astype(np.int32))
        key_plan = KeyPlan(fold_prompt=single and b > 1, fold_return=r > 1)

    min_new = effective_min_new_tokens(cfg, t)  # min_length folded in
    extra_plan, extra_params = extra_setup(cfg, vocab=model.config.vocab_size, prompt_len=t, max_new=max_new,
                                           buffer_len=nb, do_sample=do_sample, tokenizer=tokenizer)
    plan = P.ProcessorPlan(
        repetition_penalty=cfg.repetition_penalty != 1.0,
        min_new_tokens=min_new > 0 and bool(cfg.eos_token_ids),
        eos_token_ids=cfg.eos_token_ids,
        # Sampling filters are always in a sampling program: their off values (temperature 1, top_p 1, min_p 0)
        # are exact no-ops, so switching them on and off reuses the program.
        temperature=do_sample, top_k=do_sample and cfg.top_k != 0, top_p=do_sample, min_p=do_sample,
        top_k_candidates=P.candidate_count(cfg.top_k, model.config.vocab_size) if do_sample else 0,
        extra=extra_plan,
    )
    stream = streaming_on and not beam
    # Sampling repeats the prompt rows on the host, so R only shapes beam search's output inside the program;
    # keeping it out of the sampling spec lets B prompts x R returns reuse the program compiled for B*R rows.
    spec = DecodeSpec(max_new_tokens=nb, do_sample=do_sample, num_beams=cfg.num_beams,
                      num_return_sequences=r if beam else 1,
                      top_logprobs=cfg.top_logprobs, logprobs_mode=cfg.logprobs_mode,
                      early_stopping=cfg.early_stopping if beam else False, plan=plan,
                      stream_every=stream_every if stream else 0)
    f32, i32 = np.float32, np.int32
    dp = DecodeParams(
        processors=P.ProcessorParams(
            temperature=f32(cfg.temperature), top_k=i32(min(cfg.top_k, model.config.vocab_size)),
            top_p=f32(cfg.top_p), min_p=f32(cfg.min_p or 0.0),
            repetition_penalty=f32(cfg.repetition_penalty), min_new_tokens=i32(min_new), extra=extra_params),
        max_new_tokens=i32(max_new), pad_token_id=i32(pad), length_penalty=f32(cfg.length_penalty),
        stream_id=i32(stream_id))

    ids_d, mask_d, cache_sharding = ids_b, mask_b, None
    if model.mesh is not None:  # batch rows over the mesh's data axis; parameters already carry their shardings
        from jaxgen.parallel import sharding as S
        from jaxgen.parallel.distributed import global_array

        rows_sharding = lambda x: global_array(x, S.batch_sharding(model.mesh, x.ndim))
        ids_d, mask_d = rows_sharding(ids_b), rows_sharding(mask_b)
        if keys is not None:
            keys = {k: rows_sharding(v) for k, v in keys.items()}
        cache_sharding = S.cache_sharding(model.config, model.mesh)
    if images is not None and model.mesh is not None:  # per-row image inputs split like the prompt rows
        images = images.replace(slots=rows_sharding(images.slots),
                                blocks=None if images.blocks is None else rows_sharding(images.blocks))
    args = (model.graphdef, model.config, model.dtype.name, spec, key_plan, cache_sharding, model.params, ids_d,
            mask_d, keys, dp, images)
    return _Call(args=args, config=cfg, prompt=np.repeat(ids, r, axis=0) if beam else ids,
                 rows=b * r, max_new=max_new, stream=stream)


@x64_off
def generate(model: Model, input_ids: Any, attention_mask: Any = None, config: GenerationConfig | None = None,
             key: Any = None, *, pixel_values: Any = None, token_type_ids: Any = None, target_sizes: Any = None,
             streamer: Streamer | None = None, stream_every: int = 8, tokenizer: Any = None,
             **overrides: Any) -> GenerationOutput:
    """Generate continuations of left-padded ``input_ids`` int32 ``[B, T]`` with one compiled program.

    ``config`` defaults to the model's ``generation_config.json`` (else transformers' defaults); keyword
    ``overrides`` (``max_new_tokens=32, do_sample=True, ...``) apply on top. ``key``: needed only for sampling:
    one PRNG key per prompt row (shape ``[B]``), or one key (a single prompt samples with it; prompt ``i`` of
    several with ``fold_in(key, i)``). Same inputs and key give bit-identical outputs. See
    :class:`GenerationOutput`. Raises :class:`jaxgen.NonFiniteLogitsError` if the model's logits hold NaN or +inf.

    ``streamer(tokens[B', N], num_steps, done[B'])`` (greedy/sampling) receives the new tokens every
    ``stream_every`` steps from inside the compiled loop (rows in call order; only the first ``num_steps``
    columns are filled). ``tokenizer``: needed only for ``stop_strings`` (their table is built from its
    vocabulary once and cached).

    Images (Gemma 3, MiniCPM-V 4.6 checkpoints): pass what the checkpoint's ``AutoProcessor`` returned beside
    ``input_ids`` / ``attention_mask``: ``pixel_values``, and ``token_type_ids`` (Gemma 3; derived from the image
    placeholders when omitted) or ``target_sizes`` (MiniCPM-V), e.g. ``generate(model, **processor_outputs)``. The
    image encoder runs once per call, inside the compiled prefill.
    """
    user_streamer = streamer

    def route(tokens, steps, done):  # drop the bucket's filler rows before the caller sees them
        user_streamer(tokens[:rows], steps, done[:rows])

    with streaming.open_stream(route if streamer is not None else None) as stream_id:
        call = _prepare(model, input_ids, attention_mask, config, key, overrides, streamer is not None,
                        stream_every, stream_id, tokenizer,
                        _image_args(pixel_values, token_type_ids, target_sizes))
        rows = call.rows
        res = jax.block_until_ready(_compiled(*call.args))
    if jax.process_count() > 1:  # results span hosts: every process gets the full arrays (process 0 writes them)
        from jaxgen.parallel.distributed import fetch

        res = fetch(res)
    res = {k: np.asarray(v)[:rows] for k, v in res.items()}  # numpy slicing: no compiled slice per shape
    bad = np.flatnonzero(res["nonfinite_step"] >= 0)
    if bad.size:
        row, at = int(bad[0]), int(res["nonfinite_step"][bad[0]])
        raise NonFiniteLogitsError(
            f"the model's logits hold NaN or +inf at generation step {at} of row {row}"
            f"{f' (and {bad.size - 1} more rows)' if bad.size > 1 else ''}: the weights contain NaN/inf, or "
            f"{model.dtype.name} overflowed; check the checkpoint, or load with dtype='float32' or 'bfloat16'.",
            row=row, step=at)
    n = call.max_new
    return GenerationOutput(
        sequences=to_device(np.concatenate([call.prompt, res["tokens"][:, :n]], axis=1)),
        token_logprobs=to_device(res["token_logprobs"][:, :n]),
        top_token_ids=to_device(res["top_ids"][:, :n]),
        top_logprobs=to_device(res["top_logprobs"][:, :n]),
        num_generated=to_device(res["num_generated"]),
        sequences_scores=to_device(res["sequences_scores"]) if "sequences_scores" in res else None,
        keys=to_device(res["keys"]) if "keys" in res else None,
        prompt_length=call.prompt.shape[1], config=call.config)


def compile_count() -> int:
    """How many decoding programs have been compiled in this process (a recompilation guard for tests/benchmarks)."""
    return _compiled._cache_size()


@x64_off
def lower(model: Model, input_ids: Any, attention_mask: Any = None, config: GenerationConfig | None = None,
          key: Any = None, *, pixel_values: Any = None, token_type_ids: Any = None, target_sizes: Any = None,
          tokenizer: Any = None, **overrides: Any) -> jax.stages.Lowered:
    """The compiled program ``generate`` would run for these arguments, lowered (``.compile()``, ``.as_text()``,
    ``.compile().input_shardings``) — for inspecting shardings and compile cost without running it."""
    return _compiled.lower(*_prepare(model, input_ids, attention_mask, config, key, overrides, tokenizer=tokenizer,
                                     image_args=_image_args(pixel_values, token_type_ids, target_sizes)).args)


def _image_args(pixel_values: Any, token_type_ids: Any, target_sizes: Any) -> dict[str, Any]:
    to_np = lambda x: None if x is None else np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)  # noqa: E731
    return dict(pixel_values=to_np(pixel_values), token_type_ids=to_np(token_type_ids),
                target_sizes=to_np(target_sizes))


def _row_keys(keys: dict[str, Array], plan: KeyPlan) -> tuple[Array, Array]:
    """Typed per-row keys ``[R]`` and their data ``uint32[R, 2]``, derived inside the program (no host op)."""
    k = jax.random.wrap_key_data(keys["data"])
    if plan.fold_prompt:
        k = jax.vmap(jax.random.fold_in)(k, keys["prompt"])
    if plan.fold_return:
        k = jax.vmap(jax.random.fold_in)(k, keys["ret"])
    return k, jax.random.key_data(k)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "dtype", "spec", "key_plan", "cache_sharding"))
def _compiled(graphdef, config, dtype: str, spec: DecodeSpec, key_plan: KeyPlan, cache_sharding, params,
              input_ids, mask, keys, dp: DecodeParams, images: ImageInputs | None = None) -> dict[str, Array]:
    """Prefill + decode loop (greedy, sampling or beam search) as one program; the cache lives inside it. With
    ``images``, the image encoder runs once, inside the prefill."""
    step = make_step(graphdef)
    b, t = input_ids.shape
    cache = init_cache(config, b, t + spec.max_new_tokens, jnp.dtype(dtype))
    if cache_sharding is not None:
        cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
    if spec.num_beams == 1:
        row_keys, key_data = _row_keys(keys, key_plan) if keys is not None else (None, None)
        s = decode(step, params, input_ids, mask, row_keys, cache, spec, dp, emit=streaming.deliver, images=images)
        out = dict(tokens=s.tokens, token_logprobs=s.token_logprobs, top_ids=s.top_ids,
                   top_logprobs=s.top_logprobs, num_generated=s.num_generated, nonfinite_step=s.nonfinite_step)
        if key_data is not None:
            out["keys"] = key_data
        return out
    s = beam_search(step, params, input_ids, mask, cache, spec, dp, images=images)
    r = spec.num_return_sequences
    flat = lambda x: x[:, :r].reshape((b * r,) + x.shape[2:])
    return dict(tokens=flat(s.finished.tokens), token_logprobs=flat(s.finished.token_logprobs),
                top_ids=flat(s.finished.top_ids), top_logprobs=flat(s.finished.top_logprobs),
                num_generated=flat(s.finished_lengths), sequences_scores=flat(s.finished_scores),
                nonfinite_step=jnp.repeat(s.nonfinite_step, r))
