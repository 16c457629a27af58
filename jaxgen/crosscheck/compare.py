"""Cross-check jaxgen against transformers (PyTorch) on the same checkpoint and prompts.

``compare(hf_dir, prompts)`` runs both frameworks and returns a :class:`CrosscheckReport` with, per prompt and
mode:

- ``prefill_max_abs_diff``: max |logit difference| over every prompt position and vocabulary entry;
- ``logprob_max_abs_diff``: max |difference| of per-token logprobs along the generated sequences, where each
  side's sequences are scored by the other side (teacher forcing) and compared with the logprobs the generating
  side recorded;
- greedy: token agreement; at the first divergent step, both sides' top-2 tokens and the margin between them
  (processed scores, logit units) and a verdict: ``identical``, ``near-tie`` (the margin is below
  ``Tolerances.tie`` on both sides, so float rounding decides), or ``MISMATCH``;
- beam: returned sequences and ``sequences_scores`` compared; differing sequences whose scores agree within
  ``Tolerances.tie`` are a near-tie (the beams were ranked by rounding), otherwise a mismatch;
- sample: token-for-token comparison through shared uniforms (transformers samples through
  :class:`jaxgen.crosscheck.hf_uniform_sampler.JaxgenUniformSampler`), plus cross scoring. A divergence at a step where the
  draw was within ``Tolerances.sample_boundary`` of a CDF boundary is a near-tie (see that module's guarantee).

Any value over its tolerance is a ``MISMATCH`` too. torch and transformers are imported inside the functions, so
``import jaxgen`` never imports them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from jaxgen.errors import NonFiniteLogitsError
from jaxgen.crosscheck.hf_side import CrosscheckError, Sides, hf_generate_kwargs, load_hf
from jaxgen.crosscheck.report import (IDENTICAL, MISMATCH, NEAR_TIE, NON_FINITE, TOLERANCES, CrosscheckReport,
                                      ModeResult, Tolerances, worst)

__all__ = ["CrosscheckError", "CrosscheckReport", "ModeResult", "TOLERANCES", "Tolerances", "compare"]

MODES = ("greedy", "beam", "sample")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _cut(tokens: Sequence[int], eos: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS."""
    out = []
    for t in tokens:
        out.append(int(t))
        if int(t) in eos:
            break
    return out


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _top2(logprobs_or_scores: np.ndarray) -> tuple[list[int], list[float]]:
    order = np.argsort(-logprobs_or_scores, kind="stable")[:2]
    return [int(i) for i in order], [float(logprobs_or_scores[i]) for i in order]


def _teacher_forced(logits: np.ndarray, seq: list[int], start: int) -> np.ndarray:
    """Raw logprobs of ``seq[start:]`` from full-sequence ``logits[len(seq), V]``."""
    lp = _log_softmax(logits[start - 1:len(seq) - 1])
    return lp[np.arange(len(seq) - start), np.asarray(seq[start:])]


def _max_abs(*arrays: np.ndarray) -> float:
    vals = [float(np.max(np.abs(a))) for a in arrays if a is not None and np.size(a)]
    return max(vals) if vals else 0.0

def compare(hf_dir: str, prompts: Sequence[str | Sequence[int]], modes: Sequence[str] = MODES,
            dtype: str = "float32", max_new_tokens: int = 16, seeds: Sequence[int] = (0,), *,
            num_beams: int = 3, num_return_sequences: int | None = None, sample_config: dict | None = None,
            chat: bool = False, jax_model_dir: str | None = None, tolerances: Tolerances | None = None,
            hf_model: Any = None, jax_model: Any = None, tokenizer: Any = None,
            images: Sequence[Any] | None = None) -> CrosscheckReport:
    """Run transformers and jaxgen on ``prompts`` and compare them; see the module docstring.

    ``hf_dir``: the Hugging Face checkpoint folder (transformers' side). ``jax_model_dir``: jaxgen's side (default
    ``hf_dir``; a converted folder, or another checkpoint, e.g. to show that a perturbed weight is caught).
    ``prompts``: texts (need a tokenizer in ``hf_dir``) or token-id lists; each is run alone (batch 1).
    ``modes``: any of "greedy", "beam", "sample". ``seeds``: sampling seeds; prompt ``i`` with seed ``s`` uses the
    row key ``fold_in(key(s), i)``. ``sample_config``: e.g. ``dict(temperature=0.7, top_k=20, top_p=0.9,
    min_p=0.05)``. Both sides start from the checkpoint's ``generation_config.json``, as their ``generate`` do.
    ``hf_model`` / ``jax_model`` / ``tokenizer``: already loaded objects to reuse (skip loading). ``images``
    (PIL images): every prompt becomes one chat turn holding them, through the checkpoint's processor, on both
    sides (transformers' ``AutoModelForImageTextToText``).
    """
    import jaxgen
    from jaxgen.api.generate import resolve_config
    from jaxgen.text.tokenizer import encode_prompts, has_tokenizer, load_tokenizer

    modes = tuple(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise CrosscheckError(f"unknown mode(s) {bad or modes!r}; choose from {', '.join(MODES)}.")
    if dtype not in TOLERANCES:
        raise CrosscheckError(f"dtype={dtype!r} is not supported; use one of {', '.join(TOLERANCES)}.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise CrosscheckError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1.")
    prompts = list(prompts)
    if not prompts:
        raise CrosscheckError("no prompts given.")
    tol = tolerances or TOLERANCES[dtype]
    sample_config = dict(sample_config or {})
    unknown = sorted(set(sample_config) - {"temperature", "top_k", "top_p", "min_p"})
    if unknown:
        raise CrosscheckError(f"sample_config has unknown keys {unknown}; use temperature, top_k, top_p, min_p.")

    if jax_model is None:
        jax_model = jaxgen.load_model(jax_model_dir or hf_dir, dtype=dtype)
    processor = None
    if images:
        from jaxgen.text.images import load_processor

        processor = load_processor(hf_dir)
    if hf_model is None:
        hf_model = load_hf(hf_dir, dtype, images=bool(images))
    hf_vocab = hf_model.config.get_text_config().vocab_size  # a multimodal model keeps it in text_config
    if hf_vocab != jax_model.config.vocab_size:
        raise CrosscheckError(f"vocab sizes differ: transformers {hf_vocab}, jaxgen "
                              f"{jax_model.config.vocab_size}; the two folders are not the same model.")
    texts = [p for p in prompts if isinstance(p, str)]
    if texts and tokenizer is None:
        if not has_tokenizer(hf_dir):
            raise CrosscheckError(f"{hf_dir} has no tokenizer, so text prompts cannot be encoded; give token-id "
                                  "prompts (lists of ints, or --ids on the command line).")
        tokenizer = load_tokenizer(hf_dir)
    image_inputs: list[dict] = [{} for _ in prompts]
    if images:
        from jaxgen.text.images import encode_with_images

        encoded = []
        for i, p in enumerate(prompts):
            inputs = encode_with_images(processor, [p], images)
            encoded.append(inputs.pop("input_ids")[0].tolist())
            inputs.pop("attention_mask", None)
            image_inputs[i] = inputs
    else:
        encoded = encode_prompts(tokenizer, prompts, chat=chat)
    sides = Sides(hf_model, jax_model)
    results: list[ModeResult] = []

    for pi, (prompt, ids) in enumerate(zip(prompts, encoded)):
        prefill_cache: dict[str, float] = {}
        sides.images = image_inputs[pi]
        for mode in modes:
            runs = seeds if mode == "sample" else (None,)
            for seed in runs:
                overrides = dict(max_new_tokens=max_new_tokens, top_logprobs=2)
                if mode == "greedy":
                    overrides.update(do_sample=False, num_beams=1, num_return_sequences=1, logprobs_mode="processed")
                elif mode == "beam":
                    overrides.update(do_sample=False, num_beams=num_beams,
                                     num_return_sequences=num_return_sequences or num_beams, logprobs_mode="raw")
                else:
                    overrides.update(do_sample=True, num_beams=1, num_return_sequences=1, logprobs_mode="raw",
                                     **sample_config)
                try:
                    cfg = resolve_config(jax_model, None, overrides)
                except ValueError as e:
                    raise CrosscheckError(str(e)) from e
                if cfg.pad_token_id is None:
                    cfg = cfg.replace(pad_token_id=cfg.eos_token_ids[0] if cfg.eos_token_ids else 0)
                try:
                    results.append(_run_mode(sides, mode, pi, prompt, ids, cfg, seed, tol, prefill_cache))
                except NonFiniteLogitsError as e:  # its own verdict: neither side's tokens mean anything
                    results.append(ModeResult(prompt_index=pi, prompt=prompt, mode=mode, verdict=NON_FINITE,
                                              prefill_max_abs_diff=math.nan, logprob_max_abs_diff=math.nan,
                                              jax_tokens=[], hf_tokens=[], seed=seed,
                                              notes=[f"jaxgen: {e}"]))

    return CrosscheckReport(model=str(hf_dir), jax_model=str(jax_model_dir or hf_dir), dtype=dtype,
                            max_new_tokens=max_new_tokens, tolerances=tol, results=results,
                            settings=dict(modes=list(modes), seeds=list(seeds), num_beams=num_beams,
                                          sample_config=sample_config, chat=chat or bool(images),
                                          images=len(images or ()), versions=_versions()))


def _versions() -> dict[str, str]:
    """What was compared: the report names the transformers and torch it ran against."""
    import importlib.metadata as md

    return {name: md.version(name) for name in ("jaxgen", "transformers", "torch", "jax")}


def _run_mode(sides: Sides, mode: str, pi: int, prompt, ids: list[int], cfg, seed: int | None, tol: Tolerances,
              prefill_cache: dict) -> ModeResult:
    """Generate with both sides in one mode for one prompt, score both outputs on both sides, give the verdict."""
    import jax
    import torch

    import jaxgen
    from jaxgen.crosscheck.hf_uniform_sampler import sampling_kwargs, uniforms_for

    t = len(ids)
    n = cfg.max_new_tokens
    eos = set(cfg.eos_token_ids)
    hf_kwargs = hf_generate_kwargs(cfg, n)
    notes: list[str] = []
    details: dict[str, Any] = {}
    p_ids = np.asarray([ids], np.int32)
    torch_ids = torch.tensor(p_ids, dtype=torch.long)

    sampler = None
    key = None
    if mode == "greedy":
        hf_kwargs.update(do_sample=False, num_beams=1)
    elif mode == "beam":
        hf_kwargs.update(do_sample=False, num_beams=cfg.num_beams, num_return_sequences=cfg.num_return_sequences,
                         output_logits=False)
    else:
        key = jax.random.fold_in(jax.random.key(seed), pi)[None]
        extra, sampler = sampling_kwargs(uniforms_for(key, n), t, temperature=cfg.temperature, top_k=cfg.top_k,
                                         top_p=cfg.top_p, min_p=cfg.min_p)
        hf_kwargs.update(extra)

    out = jaxgen.generate(sides.jax, p_ids, config=cfg, key=key, **sides.image_kwargs(t))
    new = np.asarray(out.new_tokens)
    num = np.asarray(out.num_generated)
    jax_seqs = [[int(x) for x in new[i, :num[i]]] for i in range(new.shape[0])]

    with torch.no_grad():
        extra = {k: torch.tensor(v) for k, v in sides.image_kwargs(t).items()}
        hf_out = sides.hf.generate(torch_ids, attention_mask=torch.ones_like(torch_ids), **hf_kwargs, **extra)
    hf_new = hf_out.sequences[:, t:].numpy()
    hf_seqs = [_cut(row, eos) for row in hf_new]

    # Teacher forcing: every sequence of both sides through both models.
    all_seqs = [ids + s for s in jax_seqs] + [ids + s for s in hf_seqs]
    jl, hl = sides.jax_logits(all_seqs), sides.hf_logits(all_seqs)
    if "prefill" not in prefill_cache:  # the same prompt in every mode: measure it once
        prefill_cache["prefill"] = float(np.abs(jl[0][:t] - hl[0][:t]).max())
    prefill = prefill_cache["prefill"]
    tf_diffs = [_teacher_forced(a, s, t) - _teacher_forced(b, s, t) for a, b, s in zip(jl, hl, all_seqs)]
    details["teacher_forced_logprob_diffs"] = [d.tolist() for d in tf_diffs]
    lp_diffs = list(tf_diffs)

    verdict = IDENTICAL
    first = None
    if mode in ("greedy", "sample"):
        j, h = jax_seqs[0], hf_seqs[0]
        first = _first_diff(j, h)
        # Each side's own recorded logprobs against the other side's teacher forcing.
        jax_own = np.asarray(out.token_logprobs)[0, :len(j)].astype(np.float64)
        hf_scores = hf_out.scores if mode == "greedy" else hf_out.logits  # greedy: processed; sample: raw
        hf_own = np.asarray([_log_softmax(hf_scores[i][0].float().numpy())[tok] for i, tok in enumerate(h)])
        if mode == "sample":
            cross_j = jax_own - _teacher_forced(hl[0], all_seqs[0], t)
            cross_h = hf_own - _teacher_forced(jl[1], all_seqs[1], t)
            details["jax_sequence_scored_by_hf"] = cross_j.tolist()
            details["hf_sequence_scored_by_jax"] = cross_h.tolist()
            lp_diffs += [cross_j, cross_h]
        else:
            common = len(j) if first is None else first
            in_loop = jax_own[:common] - hf_own[:common]  # processed logprobs, recorded inside both loops
            details["in_loop_processed_logprob_diffs"] = in_loop.tolist()
            lp_diffs.append(in_loop)
        if first is not None:
            if first >= min(len(j), len(h)):
                verdict = MISMATCH
                notes.append(f"step {first}: one side stopped, the other did not (lengths {len(j)} vs {len(h)})")
            elif mode == "greedy":
                jt = np.asarray(out.top_token_ids)[0, first].tolist()
                jlp = np.asarray(out.top_logprobs)[0, first].astype(np.float64)
                jm = float(jlp[0] - jlp[1])
                ht, hv = _top2(hf_out.scores[first][0].float().numpy().astype(np.float64))
                hm = hv[0] - hv[1]
                tie = jm < tol.tie and hm < tol.tie
                verdict = NEAR_TIE if tie else MISMATCH
                details["divergence"] = dict(step=first, jax_top2=jt, jax_margin=jm, hf_top2=ht, hf_margin=hm)
                notes.append(f"step {first}: jaxgen top-2 {jt} margin {jm:.3g}; transformers top-2 {ht} margin "
                             f"{hm:.3g} -> {'near-tie' if tie else 'MISMATCH'} (tie tolerance {tol.tie:g})")
            else:
                dist = float(sampler.boundary_distance[0, first])
                u = float(sampler.uniforms[0, first])
                tie = dist < tol.sample_boundary
                verdict = NEAR_TIE if tie else MISMATCH
                details["divergence"] = dict(step=first, jax_token=j[first], hf_token=h[first], uniform=u,
                                             boundary_distance=dist)
                notes.append(f"step {first}: jaxgen drew {j[first]}, transformers {h[first]} from u={u:.9f}, "
                             f"{dist:.3g} from a CDF boundary -> {'near-tie' if tie else 'MISMATCH'} "
                             f"(boundary tolerance {tol.sample_boundary:g})")
        if mode == "sample":
            reached = sampler.boundary_distance[0, :len(h)]
            details["min_boundary_distance"] = float(np.nanmin(reached)) if reached.size else None
            details["uniforms"] = sampler.uniforms[0, :len(h)].tolist()
    else:  # beam
        js = np.asarray(out.sequences_scores, np.float64)
        hs = hf_out.sequences_scores.double().numpy()
        details.update(jax_scores=js.tolist(), hf_scores=hs.tolist())
        # jaxgen's in-loop raw logprobs of each returned beam against transformers' teacher forcing.
        for i, s in enumerate(jax_seqs):
            own = np.asarray(out.token_logprobs)[i, :len(s)].astype(np.float64)
            lp_diffs.append(own - _teacher_forced(hl[i], all_seqs[i], t))
        for r, (a, b) in enumerate(zip(jax_seqs, hf_seqs)):
            d = _first_diff(a, b)
            gap = abs(js[r] - hs[r])
            if d is None:
                if gap > tol.beam_score:
                    verdict = worst(verdict, MISMATCH)
                    notes.append(f"beam {r}: same tokens, sequences_scores differ by {gap:.3g} "
                                 f"(> {tol.beam_score:g})")
                continue
            first = d if first is None else first
            tie = gap < tol.tie
            verdict = worst(verdict, NEAR_TIE if tie else MISMATCH)
            notes.append(f"beam {r}: differs at step {d}; scores jaxgen {js[r]:.6f} vs transformers {hs[r]:.6f} "
                         f"-> {'near-tie' if tie else 'MISMATCH'} (tie tolerance {tol.tie:g})")
        details["max_score_diff"] = float(np.max(np.abs(js - hs)))

    lp_max = _max_abs(*lp_diffs)
    if prefill > tol.logits:
        verdict = MISMATCH
        notes.append(f"prefill logits differ by {prefill:.3g} (> {tol.logits:g})")
    if lp_max > tol.logprobs:
        verdict = MISMATCH
        notes.append(f"logprobs along the sequences differ by {lp_max:.3g} (> {tol.logprobs:g})")
    return ModeResult(prompt_index=pi, prompt=prompt, mode=mode, seed=seed, verdict=verdict,
                      prefill_max_abs_diff=prefill, logprob_max_abs_diff=lp_max, jax_tokens=jax_seqs,
                      hf_tokens=hf_seqs, first_divergence=first, notes=notes, details=details)
