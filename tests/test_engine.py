"""jaxgen.Engine: each request's result is what ``jaxgen.generate`` returns for that prompt alone, whatever the slot
count, the other requests or their order; mixed settings share one set of programs; bad input fails up front."""

from __future__ import annotations

import functools

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from conftest import count_all_compiles, hf_checkpoint
from jaxgen.decode import processors as P

G = jaxgen.GenerationConfig
FIELDS = ("sequences", "num_generated", "top_token_ids")


@functools.lru_cache(maxsize=None)
def model(variant: str = "llama_gqa"):
    folder, _ = hf_checkpoint(variant)
    return jaxgen.load_model(folder, dtype="float32")


def random_prompts(lengths, seed=0, vocab=128):
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(3, vocab, n)] for n in lengths]


def assert_same(out, ref, where=""):
    for f in FIELDS:
        a, b = np.asarray(getattr(out, f)), np.asarray(getattr(ref, f))
        assert a.shape == b.shape and a.dtype == b.dtype, (where, f, a.shape, b.shape)
        np.testing.assert_array_equal(a, b, err_msg=f"{where} {f}")
    for f in ("token_logprobs", "top_logprobs"):
        a, b = np.asarray(getattr(out, f)), np.asarray(getattr(ref, f))
        assert a.shape == b.shape, (where, f)
        # Float rounding only: on this random model (large weights) generate itself moves logprobs by ~1e-5
        # when just its cache bucket changes, and batch-1 matmuls take another kernel path than batches >= 2.
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f"{where} {f}")
    if ref.keys is None:
        assert out.keys is None
    else:
        np.testing.assert_array_equal(np.asarray(out.keys), np.asarray(ref.keys))
    assert out.prompt_length == ref.prompt_length and out.config == ref.config, where


def assert_matches_generate(m, prompts, configs, keys, outs):
    for i, (p, c, k) in enumerate(zip(prompts, configs, keys)):
        assert_same(outs[i], jaxgen.generate(m, [p], config=c, key=k), f"request {i}")


# ------------------------------------------------------------------------------------ per-row processors

def test_per_row_processor_params_equal_each_row_alone():
    """[B] settings give, row by row, exactly what that row's scalar settings give (candidate and full paths)."""
    rng = np.random.default_rng(0)
    b, vocab = 5, 2048
    x = jnp.asarray(rng.normal(size=(b, vocab)) * 3, jnp.float32)
    seen = jnp.asarray(rng.random((b, vocab)) < 0.05)
    rows = dict(temperature=[0.7, 1.0, 1.3, 0.5, 2.0], top_k=[20, 50, 1, 64, 7], top_p=[0.9, 1.0, 0.5, 0.95, 0.99],
                min_p=[0.0, 0.05, 0.0, 0.1, 0.2], repetition_penalty=[1.2, 1.0, 0.8, 1.0, 1.5],
                min_new_tokens=[0, 3, 0, 1, 5])
    dtypes = dict(top_k=jnp.int32, min_new_tokens=jnp.int32)
    for candidates, top_k in ((64, rows["top_k"]), (0, rows["top_k"]), (64, [20, 0, 5, 64, 7])):
        plan = P.ProcessorPlan(repetition_penalty=True, min_new_tokens=True, eos_token_ids=(2, 5), temperature=True,
                               top_k=True, top_p=True, min_p=True, top_k_candidates=candidates)
        vals = dict(rows, top_k=top_k)
        params = lambda sl: P.ProcessorParams(**{n: jnp.asarray(v, dtypes.get(n, jnp.float32))[sl]
                                                 for n, v in vals.items()})
        run = jax.jit(lambda x, s, prm, n: P.process(x, plan, prm, seen=s, num_generated=n, do_sample=True))
        together = np.asarray(run(x, seen, params(slice(None)), jnp.full((b,), 2, jnp.int32)))
        for i in range(b):
            alone = np.asarray(run(x[i:i + 1], seen[i:i + 1], params(i), jnp.int32(2)))
            np.testing.assert_array_equal(together[i:i + 1], alone, err_msg=f"row {i}, candidates {candidates}")


# ------------------------------------------------------------------------------------ parity with generate

def test_mixed_requests_equal_generate_alone():
    """Greedy and sampling, prompt lengths 1..40 (two buckets), n > 1, EOS mid-way, top_logprobs, processed
    logprobs, every filter, more requests than slots (14 samples, 4 slots)."""
    m = model()
    prompts = random_prompts([5, 17, 3, 40, 9, 12, 1, 26])
    configs = [
        G(max_new_tokens=10, pad_token_id=0),
        G(max_new_tokens=16, do_sample=True, temperature=0.8, top_p=0.9, top_k=20, top_logprobs=3, pad_token_id=0),
        G(max_new_tokens=7, do_sample=True, num_return_sequences=3, min_p=0.05, pad_token_id=0),
        G(max_new_tokens=12, top_logprobs=2, repetition_penalty=1.3, logprobs_mode="processed", pad_token_id=0),
        G(max_new_tokens=20, do_sample=True, num_return_sequences=2, temperature=1.3, top_k=0, pad_token_id=0),
        G(max_new_tokens=16, do_sample=True, top_k=5, min_new_tokens=6, repetition_penalty=0.8,
          logprobs_mode="processed", top_logprobs=1, pad_token_id=0),
        G(max_new_tokens=9, min_new_tokens=2),  # pad_token_id None: the first EOS id pads
        G(max_new_tokens=14, do_sample=True, num_return_sequences=4, top_p=0.7, pad_token_id=0),
    ]
    keys = list(jax.random.split(jax.random.key(7), len(prompts)))
    engine = jaxgen.Engine(m, max_slots=4, max_top_logprobs=3)
    # EOS ids that really occur mid-way: each request's own 4th token without EOS (EOS ids are traced in the
    # engine, so this first run compiles nothing the second needs anew).
    first = engine.generate(prompts, configs, keys, eos_token_id=None, pad_token_id=0)
    eos = [int(np.asarray(o.new_tokens)[0, 3]) for o in first]
    configs = [c.replace(eos_token_id=(eos[i], 2) if i % 2 else eos[i]) for i, c in enumerate(configs[:-1])] + [
        configs[-1].replace(eos_token_id=None)]
    outs = engine.generate(prompts, configs, keys)
    assert_matches_generate(m, prompts, configs, keys, outs)
    stopped = [int(np.asarray(o.num_generated).min()) < c.max_new_tokens for o, c in zip(outs, configs)]
    assert sum(stopped) >= 5, stopped  # EOS really ended rows mid-way
    assert engine.stats["copied_rows"] == 2 + 1 + 3  # n samples share one prefill
    assert engine.stats["prefill_rows"] == len(prompts)


def test_results_do_not_depend_on_slots_or_order():
    m = model()
    prompts = random_prompts([4, 20, 11, 2, 30], seed=3)
    configs = [G(max_new_tokens=n, do_sample=s, num_return_sequences=r, top_logprobs=1, pad_token_id=0,
                 eos_token_id=2, temperature=0.9)
               for n, s, r in [(12, True, 2), (5, False, 1), (16, True, 1), (9, True, 3), (14, False, 1)]]
    keys = list(jax.random.split(jax.random.key(11), len(prompts)))
    runs = {}
    for slots in (2, 5):
        runs[slots] = jaxgen.Engine(m, max_slots=slots, max_top_logprobs=1).generate(prompts, configs, keys)
    order = [4, 2, 0, 3, 1]
    shuffled = jaxgen.Engine(m, max_slots=5, max_top_logprobs=1).generate(
        [prompts[i] for i in order], [configs[i] for i in order], [keys[i] for i in order])
    for j, i in enumerate(order):
        assert_same(shuffled[j], runs[5][i], f"order {i}")
    for i in range(len(prompts)):
        assert_same(runs[2][i], runs[5][i], f"slots {i}")
    assert_same(runs[2][3], jaxgen.generate(m, [prompts[3]], config=configs[3], key=keys[3]))


def test_cache_shifts_and_sliding_window_keep_parity():
    """Tiny caps (P = M = 16, capacity 48) force many cache shifts; a sliding-window model compares slots."""
    m = model("mistral_window")
    prompts = random_prompts([9, 16, 3, 12, 6, 14, 1, 11, 5, 15], seed=5)
    configs = [G(max_new_tokens=16 - i % 3, do_sample=i % 2 == 0, pad_token_id=0, eos_token_id=None)
               for i in range(len(prompts))]
    keys = list(jax.random.split(jax.random.key(2), len(prompts)))
    engine = jaxgen.Engine(m, max_slots=2, max_prompt_length=16, max_new_tokens=16)
    outs = engine.generate(prompts, configs, keys)
    assert engine.stats["shifts"] >= 2, engine.stats
    assert_matches_generate(m, prompts, configs, keys, outs)


# ------------------------------------------------------------------------------------ compiles, streaming, errors

def test_nothing_compiles_after_warmup_for_any_mix_of_settings():
    m = model()
    engine = jaxgen.Engine(m, max_slots=4, max_prompt_length=32, max_new_tokens=16, max_top_logprobs=2)
    engine.warmup()
    mixes = [
        ([3, 30, 7, 12, 1], [G(max_new_tokens=8, do_sample=True, top_k=10, pad_token_id=0),
                             G(max_new_tokens=16, pad_token_id=0, top_logprobs=2),
                             G(max_new_tokens=4, do_sample=True, num_return_sequences=3, min_p=0.1, pad_token_id=0),
                             G(max_new_tokens=12, repetition_penalty=1.5, eos_token_id=(2, 9), pad_token_id=0),
                             G(max_new_tokens=16, do_sample=True, top_p=0.5, temperature=2.0, pad_token_id=0)]),
        ([20, 2, 9], [G(max_new_tokens=5, do_sample=True, num_return_sequences=4, top_k=0, pad_token_id=0,
                        logprobs_mode="processed", top_logprobs=1),
                      G(max_new_tokens=16, min_new_tokens=9, eos_token_id=2, pad_token_id=0),
                      G(max_new_tokens=1, do_sample=True, pad_token_id=0)]),
    ]
    prepared = [(random_prompts(lengths, seed=i), configs, list(jax.random.split(jax.random.key(i), len(configs))))
                for i, (lengths, configs) in enumerate(mixes)]  # keys split before counting (a slice compiles)
    with count_all_compiles() as compiles:
        for prompts, configs, keys in prepared:
            engine.generate(prompts, configs, keys)
    assert compiles == [], compiles


def test_stream_yields_in_completion_order_with_callback_and_progress(capsys):
    m = model()
    prompts = random_prompts([5, 6, 7], seed=9)
    configs = [G(max_new_tokens=n, pad_token_id=0, eos_token_id=None) for n in (16, 2, 8)]
    engine = jaxgen.Engine(m, max_slots=4)
    order = [i for i, _ in engine.stream(prompts, configs, progress=True)]
    assert order == [1, 2, 0]
    assert "jaxgen.Engine" in capsys.readouterr().err  # the tqdm bar
    abandoned = engine.stream(prompts, configs)
    next(abandoned)
    abandoned.close()  # rows left behind must not leak into the next call
    seen = []
    outs = engine.generate(prompts, configs, callback=lambda i, out: seen.append((i, int(out.num_generated[0]))))
    assert seen == [(1, 2), (2, 8), (0, 16)] and [int(o.num_generated[0]) for o in outs] == [16, 2, 8]
    assert_same(outs[0], jaxgen.generate(m, [prompts[0]], config=configs[0]))


def test_beam_search_requests_go_to_generate():
    m = model()
    prompts = random_prompts([6, 4], seed=4)
    configs = [G(max_new_tokens=4, num_beams=2, pad_token_id=0), G(max_new_tokens=4)]
    outs = jaxgen.Engine(m, max_slots=2).generate(prompts, configs)
    ref = jaxgen.generate(m, [prompts[0]], config=configs[0])
    np.testing.assert_array_equal(np.asarray(outs[0].sequences), np.asarray(ref.sequences))
    np.testing.assert_array_equal(np.asarray(outs[0].sequences_scores), np.asarray(ref.sequences_scores))
    assert outs[1].sequences.shape == (1, 4 + 4)


@pytest.mark.parametrize("bad, message", [
    (dict(prompt=list(range(3, 120)) * 3), "longer than the model's context"),
    (dict(overrides=dict(temprature=0.5)), "unknown generation option"),
    (dict(config=G(max_new_tokens=4, top_logprobs=5)), "above the engine's cap of 2"),
    (dict(config=G(max_new_tokens=4, do_sample=True), key=None), "needs a key"),
    (dict(config=G(max_new_tokens=4, top_p=1.5)), "top_p"),
])
def test_bad_input_is_rejected_before_anything_runs(bad, message):
    m = model()
    engine = jaxgen.Engine(m, max_slots=2, max_top_logprobs=2)
    prompts = random_prompts([4, 5, 6], seed=1)
    configs = [G(max_new_tokens=4, pad_token_id=0)] * 3
    keys = list(jax.random.split(jax.random.key(0), 3))
    prompts[1] = bad.get("prompt", prompts[1])
    configs[1] = bad.get("config", configs[1])
    keys[1] = bad.get("key", keys[1])
    with pytest.raises(ValueError, match=message) as err:
        engine.stream(prompts, configs, keys, **bad.get("overrides", {}))  # raises before iteration starts
    assert "request" in str(err.value)
    assert engine.spec is None and engine.stats == {}  # nothing was allocated or run


MESH_WORKER = """
import json, sys
import jax, numpy as np, jaxgen
from jaxgen.parallel.sharding import make_mesh
folder = sys.argv[1]  # the parent's checkpoint: no torch in this process
single = jaxgen.load_model(folder, dtype="float32")
meshed = jaxgen.load_model(folder, dtype="float32", mesh=make_mesh(data=2, model=2))
rng = np.random.default_rng(0)
prompts = [[int(x) for x in rng.integers(3, 128, n)] for n in (5, 17, 9)]
G = jaxgen.GenerationConfig
configs = [G(max_new_tokens=8, do_sample=True, num_return_sequences=3, pad_token_id=0, eos_token_id=2),
           G(max_new_tokens=6, pad_token_id=0), G(max_new_tokens=10, do_sample=True, pad_token_id=0, top_p=0.9)]
keys = list(jax.random.split(jax.random.key(3), 3))
outs = jaxgen.Engine(meshed, max_slots=4, max_top_logprobs=0).generate(prompts, configs, keys)
refs = [jaxgen.generate(single, [p], config=c, key=k) for p, c, k in zip(prompts, configs, keys)]
print("REPORT " + json.dumps(dict(
    same=[bool((np.asarray(o.sequences) == np.asarray(r.sequences)).all()) for o, r in zip(outs, refs)],
    diff=max(float(np.abs(np.asarray(o.token_logprobs) - np.asarray(r.token_logprobs)).max())
             for o, r in zip(outs, refs)))))
"""


@pytest.mark.slow
def test_engine_on_a_mesh_matches_generate_on_one_device():
    """Slots over the data axis, tensor parallel over model (4 fake CPU devices, in a subprocess)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MESH_WORKER, hf_checkpoint("llama_gqa")[0]], capture_output=True,
                          text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    import json

    report = json.loads(lines[-1][len("REPORT "):])
    assert all(report["same"]), report
    assert report["diff"] <= 3e-5, report  # tensor parallelism sums partial products in another order


def test_presence_frequency_and_min_length_per_slot_equal_generate():
    """vLLM's presence / frequency penalties and min_length are per-slot values: mixed with requests without
    them (and with each other, greedy and sampling, n > 1) every request equals generate alone, and one
    program serves them all."""
    m = model()
    prompts = random_prompts([6, 11, 3, 20, 8], seed=3)
    configs = [
        G(max_new_tokens=12, presence_penalty=1.5, pad_token_id=0, top_logprobs=2, logprobs_mode="processed"),
        G(max_new_tokens=12, do_sample=True, frequency_penalty=0.7, temperature=0.9, pad_token_id=0),
        G(max_new_tokens=10, pad_token_id=0),
        G(max_new_tokens=9, do_sample=True, num_return_sequences=2, presence_penalty=-0.5, frequency_penalty=1.2,
          top_p=0.9, pad_token_id=0),
        G(max_new_tokens=10, min_length=14, pad_token_id=0),  # 8-token prompt: no EOS before 6 new tokens
    ]
    keys = list(jax.random.split(jax.random.key(11), len(prompts)))
    engine = jaxgen.Engine(m, max_slots=3, max_top_logprobs=2)
    first = engine.generate(prompts, configs, keys, eos_token_id=None)
    # EOS: request 4's own 2nd unconstrained token, which min_length must then hold back until its 6th.
    eos = int(np.asarray(jaxgen.generate(m, [prompts[4]], config=configs[4].replace(min_length=0),
                                         eos_token_id=None).new_tokens)[0, 1])
    configs = [c.replace(eos_token_id=eos) for c in configs]
    with count_all_compiles() as compiled:
        outs = engine.generate(prompts, configs, keys)
    assert compiled == [], compiled
    assert_matches_generate(m, prompts, configs, keys, outs)
    assert int(np.asarray(outs[4].num_generated)[0]) >= 6
    # The penalties change these requests' tokens (else the comparison above would not test them).
    for i in (0, 1, 3):
        plain = configs[i].replace(presence_penalty=0.0, frequency_penalty=0.0)
        assert not np.array_equal(np.asarray(jaxgen.generate(m, [prompts[i]], config=plain, key=keys[i]).sequences),
                                  np.asarray(outs[i].sequences)), i


def test_options_the_engine_does_not_carry_route_to_generate():
    """A request with an option the per-slot programs do not apply (here no_repeat_ngram_size) runs through
    generate alone: its result is generate's, never one with the option silently dropped."""
    import numpy as np

    import jaxgen
    from conftest import models
    from jaxgen.engine.scheduler import GENERATE_ONLY, generate_only_options

    model = models("llama_gqa")[0]
    cfg = jaxgen.GenerationConfig(max_new_tokens=8, do_sample=False, no_repeat_ngram_size=2, presence_penalty=0.5,
                                  pad_token_id=0, eos_token_id=2)
    assert generate_only_options(cfg) == ["no_repeat_ngram_size"]
    assert set(GENERATE_ONLY) <= {f.name for f in __import__("dataclasses").fields(jaxgen.GenerationConfig)}
    prompt = [5, 9, 17, 33]
    out = jaxgen.Engine(model, max_slots=2).generate([prompt], configs=cfg)[0]
    want = jaxgen.generate(model, np.asarray([prompt]), config=cfg)
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(want.sequences))
