"""transformers' remaining generation options, vLLM's presence/frequency penalties and stop strings, against
transformers itself.

Each mode compiles one program with every option in it; the cases run different values through it (all traced:
the test checks that nothing recompiles), so the program count stays low. Per case: greedy tokens equal
``model.generate``'s; sampled tokens' processed logprobs equal transformers' own processors teacher-forced on
jaxgen's sequences; beam sequences and scores equal. Every option must change transformers' result in some case
(an ablation on the transformers side), so no option passes by doing nothing. vLLM's penalties, which
transformers lacks, run on its side as a ``logits_processor`` (jaxgen.crosscheck.hf_side), i.e. where transformers
runs a caller's processors: after its masks, before the sampling warpers, as jaxgen does.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxgen
from conftest import left_pad, models
from jaxgen.api.generation_config import GenerationConfig, IgnoredOptionWarning
from jaxgen.crosscheck.hf_side import presence_frequency_processor
from jaxgen.decode import extra_processors as X

PROMPTS = [[5, 9, 17, 33, 4, 88, 21], [7, 8, 9]]
PAD, EOS, N = 3, 37, 12
T = len(PROMPTS[0])
# Two value sets for the same program (same static shapes: bad words and biases fall in the same table buckets).
CASES = [
    dict(no_repeat_ngram_size=3, bad_words_ids=[[81], [59, 97]], suppress_tokens=[5, 64],
         begin_suppress_tokens=[127], sequence_bias=[[[118], -3.0], [[30, 25], 4.0]], min_length=T + 4,
         forced_eos_token_id=[EOS], exponential_decay_length_penalty=(3, 1.3), renormalize_logits=True,
         presence_penalty=0.5, frequency_penalty=0.3),
    dict(no_repeat_ngram_size=2, bad_words_ids=[[10], [12, 30, 39]], suppress_tokens=[121],
         begin_suppress_tokens=[59, 10], sequence_bias=[[[72], 2.5], [[39, 12], -1.0]], min_length=T + 4,
         forced_eos_token_id=90, exponential_decay_length_penalty=(8, 1.1), renormalize_logits=True,
         presence_penalty=1.5, frequency_penalty=-0.4),
]
SAMPLING = [dict(temperature=0.9, top_k=0, typical_p=0.6, epsilon_cutoff=0.01, eta_cutoff=0.02),
            dict(temperature=1.3, top_k=0, typical_p=0.9, epsilon_cutoff=0.03, eta_cutoff=0.005)]
VLLM = ("presence_penalty", "frequency_penalty")


def _hf_kwargs(opts: dict, prompt_len: int) -> dict:
    kw = {k: v for k, v in opts.items() if k not in VLLM}
    if opts.get("presence_penalty") or opts.get("frequency_penalty"):
        kw["logits_processor"] = transformers.LogitsProcessorList([presence_frequency_processor(
            prompt_len, opts.get("presence_penalty", 0.0), opts.get("frequency_penalty", 0.0))])
    return kw


def hf_generate(ids, mask, opts, hf=None, **kw):
    hf = hf if hf is not None else models()[1]
    with torch.no_grad():
        return hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                           max_new_tokens=N, pad_token_id=PAD, eos_token_id=EOS, return_dict_in_generate=True,
                           output_scores=True, **_hf_kwargs(opts, ids.shape[1]), **kw)


def assert_every_option_bites(run, opts: dict) -> None:
    """Dropping any one option changes transformers' result ``run(opts)``: none passes by doing nothing."""
    full = run(opts)
    silent = [n for n in opts if np.array_equal(full, run({k: v for k, v in opts.items() if k != n}))]
    assert not silent, f"options that do not change transformers' output here: {silent}"


# --- greedy and beam search ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_beams", [1, 3])
def test_options_match_transformers_greedy_and_beam(num_beams):
    model, _ = models()
    ids, mask = left_pad(PROMPTS, PAD)
    for i, opts in enumerate(CASES):
        out = jaxgen.generate(model, ids, mask, max_new_tokens=N, pad_token_id=PAD, eos_token_id=EOS,
                              num_beams=num_beams, logprobs_mode="processed", **opts)
        ref = hf_generate(ids, mask, opts, num_beams=num_beams, do_sample=False)
        seq, rs = np.asarray(out.sequences), ref.sequences.numpy()
        np.testing.assert_array_equal(seq[:, :rs.shape[1]], rs, err_msg=f"case {i}")
        np.testing.assert_array_equal(seq[:, rs.shape[1]:], PAD)
        if num_beams == 1:  # the processed logprob of each token, recorded in both loops
            n = np.asarray(out.num_generated)
            hf_lp = np.stack([torch.log_softmax(sc.float(), -1).numpy() for sc in ref.scores], 1)
            hf_lp = np.take_along_axis(hf_lp, rs[:, T:, None], axis=-1)[..., 0]
            live = np.arange(hf_lp.shape[1])[None, :] < n[:, None]
            np.testing.assert_allclose(np.asarray(out.token_logprobs)[:, :hf_lp.shape[1]][live], hf_lp[live],
                                       atol=1e-5, rtol=0)
        if num_beams > 1:
            np.testing.assert_allclose(np.asarray(out.sequences_scores), ref.sequences_scores.numpy(), atol=1e-5)
        if i == 0:
            compiled = jaxgen.compile_count()
        assert jaxgen.compile_count() == compiled, "changing option values recompiled"
    if num_beams > 1:  # in beam search every option of case 1 changes the sequences or their scores
        def run(opts):
            ref = hf_generate(ids, mask, opts, num_beams=num_beams, do_sample=False)
            return np.concatenate([ref.sequences.numpy().ravel(), np.round(ref.sequences_scores.numpy(), 4)])
        assert_every_option_bites(run, CASES[1])


def test_forced_bos_and_begin_suppress_after_it_on_one_token_prompts():
    """transformers forces BOS only when input_ids has one token; begin_suppress then starts one step later.
    Unpadded rows, so no_repeat_ngram_size=1 (every token seen is banned: in transformers the pad id too, which
    jaxgen, counting real tokens only, leaves alone) is compared as well."""
    model, _ = models()
    ids, mask = left_pad([[5], [7]], PAD)
    cases = [dict(forced_bos_token_id=40, begin_suppress_tokens=[76, 30], no_repeat_ngram_size=1),
             dict(forced_bos_token_id=99, begin_suppress_tokens=[89], no_repeat_ngram_size=2)]
    run = lambda opts: hf_generate(ids, mask, opts, do_sample=False).sequences.numpy()
    for opts in cases:
        out = jaxgen.generate(model, ids, mask, max_new_tokens=N, pad_token_id=PAD, eos_token_id=EOS, **opts)
        rs = run(opts)
        np.testing.assert_array_equal(np.asarray(out.sequences)[:, :rs.shape[1]], rs)
        assert (rs[:, 1] == opts["forced_bos_token_id"]).all()
    assert_every_option_bites(run, cases[0])


# --- sampling: teacher-forced processed logprobs --------------------------------------------------------------------

def hf_processors(opts: dict, mask: np.ndarray, prompt_len: int) -> transformers.LogitsProcessorList:
    """transformers' processor list for a sampling config, as its ``generate`` builds it."""
    hf = models()[1]
    kw = _hf_kwargs(opts, prompt_len)
    extra = kw.pop("logits_processor", None)
    gc = transformers.GenerationConfig(do_sample=True, pad_token_id=PAD, eos_token_id=EOS,
                                       max_length=prompt_len + N, **kw)
    hf._prepare_special_tokens(gc, True, device="cpu")
    return hf._get_logits_processor(gc, input_ids_seq_length=prompt_len, device="cpu", logits_processor=extra,
                                    model_kwargs={"attention_mask": torch.tensor(mask, dtype=torch.long)})


def teacher_forced(out, ids, mask, opts) -> np.ndarray:
    """transformers' processed log-softmax ``[rows, N, V]`` along jaxgen's sequences (NaN past a row's end)."""
    hf = models()[1]
    seq = torch.tensor(np.asarray(out.sequences), dtype=torch.long)
    rows, t = ids.shape
    full = torch.cat([torch.tensor(mask, dtype=torch.long), torch.ones((rows, N), dtype=torch.long)], 1)
    with torch.no_grad():
        logits = hf(input_ids=seq, attention_mask=full, position_ids=(full.cumsum(-1) - 1).masked_fill(full == 0, 1)).logits
    procs = hf_processors(opts, mask, t)
    n = np.asarray(out.num_generated)
    result = np.full((rows, N, logits.shape[-1]), np.nan, np.float32)
    for s in range(int(n.max())):
        lp = torch.log_softmax(procs(seq[:, :t + s], logits[:, t + s - 1].float().clone()), -1).numpy()
        result[:, s] = np.where((s < n)[:, None], lp, np.nan)
    return result


def test_sampling_options_match_transformers_teacher_forced():
    model, _ = models()
    ids, mask = left_pad(PROMPTS, PAD)
    keys = jax.random.split(jax.random.key(3), len(PROMPTS))
    configs = [{**CASES[0], **SAMPLING[0]}, {**CASES[1], **SAMPLING[1]}]
    outs = []
    for i, opts in enumerate(configs):
        out = jaxgen.generate(model, ids, mask, key=keys, do_sample=True, max_new_tokens=N, pad_token_id=PAD,
                              eos_token_id=EOS, logprobs_mode="processed", **opts)
        full = teacher_forced(out, ids, mask, opts)
        chosen = np.asarray(out.new_tokens)
        expected = np.take_along_axis(full, chosen[..., None], axis=-1)[..., 0]
        live = ~np.isnan(expected)
        assert np.isfinite(expected[live]).all(), "jaxgen sampled a token transformers' processors exclude"
        np.testing.assert_allclose(np.asarray(out.token_logprobs)[live], expected[live], atol=1e-5, rtol=0)
        outs.append(out)
        if i == 0:
            compiled = jaxgen.compile_count()
        assert jaxgen.compile_count() == compiled, "changing typical_p / cut-offs / penalties recompiled"

    # the warpers bite: along jaxgen's sequences, each removes tokens that the other processors keep
    kept = lambda out, opts, drop=None: np.isfinite(teacher_forced(out, ids, mask, {
        k: v for k, v in opts.items() if k != drop}))
    for name in ("typical_p", "epsilon_cutoff", "eta_cutoff"):
        assert any((kept(o, c, name) != kept(o, c)).any() for o, c in zip(outs, configs)), name


@functools.partial(jax.jit, static_argnums=(1,))
def _warp(x, name, value):
    return {"typical": X.apply_typical, "epsilon": X.apply_epsilon, "eta": X.apply_eta}[name](x, value)


@pytest.mark.parametrize("name,cls,values", [
    ("typical", "TypicalLogitsWarper", [0.2, 0.5, 0.95]),
    ("epsilon", "EpsilonLogitsWarper", [1e-3, 0.02, 0.3]),
    ("eta", "EtaLogitsWarper", [1e-3, 0.02, 0.3])])
def test_sampling_warpers_on_hand_made_scores(name, cls, values):
    """Ties, -inf entries and a one-token row, compared exactly with transformers' warper."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 50)).astype(np.float32) * 2
    x[1, :25] = x[1, 25:]  # every value twice
    x[2, rng.choice(50, 20, replace=False)] = -np.inf
    x[3] = 0.0  # uniform
    x[4, 1:] = -np.inf  # one token left
    for v in values:
        warper = getattr(transformers, cls)(v) if name == "typical" else getattr(transformers, cls)(epsilon=v)
        ref = warper(None, torch.tensor(x)).numpy()
        ours = np.asarray(_warp(jnp.asarray(x), name, jnp.float32(v)))
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref), err_msg=f"{name}={v}")
        np.testing.assert_array_equal(ours[np.isfinite(ref)], ref[np.isfinite(ref)])


# --- stop strings -------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def demo():
    from jaxgen.loading import BUNDLED_MODEL

    tok = jaxgen.load_tokenizer(BUNDLED_MODEL)
    tok.padding_side = "left"
    hf = transformers.AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, dtype=torch.float32).eval()
    return jaxgen.load_model(), tok, hf


# Greedy demo continuations: "\n    # 'r'\n    # 'r'..." and ".get_name(self.name, self.name,\n ...": each stop
# string spans several tokens, and overhangs the tokens at one end or both.
STOPS = [["r'\n", "f.na"], ["# '", "name, s"], ["zzz"]]


@pytest.mark.parametrize("num_beams", [1, 2])
def test_stop_strings_stop_where_transformers_stops(num_beams):
    model, tok, hf = demo()
    batch = tok(["def fibonacci(n):", "import os"], padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    lengths = []
    for i, stops in enumerate(STOPS):
        out = jaxgen.generate(model, ids, mask, tokenizer=tok, max_new_tokens=16, do_sample=False, num_beams=num_beams,
                              stop_strings=stops, pad_token_id=0)
        with torch.no_grad():
            ref = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), tokenizer=tok,
                              stop_strings=stops, max_new_tokens=16, do_sample=False, num_beams=num_beams,
                              pad_token_id=0, return_dict_in_generate=True, output_scores=True)
        rs = ref.sequences.numpy()
        np.testing.assert_array_equal(np.asarray(out.sequences)[:, :rs.shape[1]], rs, err_msg=str(stops))
        if num_beams > 1:
            np.testing.assert_allclose(np.asarray(out.sequences_scores), ref.sequences_scores.numpy(), atol=1e-5)
        lengths.append(np.asarray(out.num_generated).tolist())
        if i == 0:
            compiled = jaxgen.compile_count()
        assert jaxgen.compile_count() == compiled, "other stop strings (same table bucket) recompiled"
    if num_beams == 1:
        assert all(n < 16 for n in lengths[0] + lengths[1]) and lengths[2] == [16, 16], lengths


def test_stop_string_check_equals_transformers_criterion():
    """Every prefix of texts that hold the stop strings at token boundaries and inside tokens: jaxgen's check
    fires exactly where transformers' StopStringCriteria does."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    from jaxgen.decode.stop_strings import stop_hit
    from jaxgen.text.stop_strings import stop_table

    _, tok, _ = demo()
    stops = ["r'\n", "f.na", "é!", " the"]
    texts = ["def f(a):\n    return 'r'\n", "self.name = x", "café! And then the end", "other wise, then"]
    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    prefixes = [s[:k] for s in seqs for k in range(1, len(s) + 1)]
    criterion = StopStringCriteria(tokenizer=tok, stop_strings=stops)
    expected = [bool(criterion(torch.tensor([p]), None)[0]) for p in prefixes]
    table, window = stop_table(tok, stops, 4096)
    w = max(map(len, prefixes))
    ids = np.zeros((len(prefixes), w), np.int32)
    valid = np.zeros((len(prefixes), w), bool)
    for i, p in enumerate(prefixes):
        ids[i, w - len(p):], valid[i, w - len(p):] = p, True
    ours = np.asarray(jax.jit(stop_hit)(table, jnp.asarray(ids[:, -window:]), jnp.asarray(valid[:, -window:])))
    assert ours.tolist() == expected
    assert 4 <= sum(expected) < len(expected)


def test_stop_strings_need_the_tokenizer():
    model, tok, _ = demo()
    with pytest.raises(ValueError, match=r"^GenerationConfig.stop_strings=.*tokenizer"):
        jaxgen.generate(model, np.array([[5, 6]], np.int32), max_new_tokens=2, do_sample=False, stop_strings="x")
    # (the two prompts and settings of test_stop_strings_stop_where_transformers_stops: the same program)
    res = jaxgen.generate_text(model, tok, ["def fibonacci(n):", "import os"], max_new_tokens=16, do_sample=False,
                               stop_strings=["r'\n", "zzz"])
    # the string is in the text (the newest token may run past it: "'\n   "), as transformers keeps it
    assert "r'\n" in res[0].text and res[0].finish_reason == "stop_string" and len(res[0].token_ids) < 16


# --- keys of a config file or an argument that jaxgen does not implement -----------------------------------------

REAL_CONFIGS = {  # generation_config.json files as their checkpoints ship them
    "llama3": {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
               "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.43.0.dev0"},
    "qwen2.5": {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8,
                "top_k": 20, "transformers_version": "4.37.0"},
    "gemma2": {"_from_model_config": True, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
               "pad_token_id": 0, "transformers_version": "4.42.0.dev0"},
    "llama2": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "temperature": 0.6, "max_length": 4096,
               "top_p": 0.9, "transformers_version": "4.31.0.dev0", "use_cache": True, "output_scores": False},
}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_real_generation_configs_load_without_a_word(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = GenerationConfig.from_dict(REAL_CONFIGS[name])
    cfg.validate(200_000)


def test_ignored_keys_warn_once_and_unsupported_keys_are_errors():
    model, _ = models()
    ids = np.array([[5, 9, 17]], np.int32)
    with pytest.warns(IgnoredOptionWarning, match=r"^GenerationConfig.use_cache=False is ignored") as record:
        GenerationConfig.from_dict({"use_cache": False, "max_time": None, "output_scores": False})
    assert len(record) == 1 and "\n" not in str(record[0].message)
    with pytest.warns(IgnoredOptionWarning, match="'chat_format' from the config is not a transformers"):
        GenerationConfig.from_dict({"chat_format": "chatml"})
    with pytest.warns(IgnoredOptionWarning, match="output_scores=True is ignored"):
        jaxgen.generate(model, ids, max_new_tokens=2, output_scores=True)
    with pytest.raises(ValueError, match=r"^GenerationConfig.guidance_scale=1.5 is not supported"):
        jaxgen.generate(model, ids, max_new_tokens=2, guidance_scale=1.5)
    jaxgen.generate(model, ids, max_new_tokens=2, guidance_scale=1.0, num_beam_groups=1)  # no-op values pass
    with pytest.raises(ValueError, match=r"unknown generation option\(s\) \['temprature'\]"):
        jaxgen.generate(model, ids, max_new_tokens=2, temprature=0.7)
    # the checkpoint's own generation_config.json: the error names the file and the key
    bad = dataclasses.replace(model, generation_config={"num_beam_groups": 2, "diversity_penalty": 0.5})
    with pytest.raises(ValueError, match=r"generation_config.json: GenerationConfig.num_beam_groups=2 .*group beam"):
        jaxgen.generate(bad, ids, max_new_tokens=2)


@pytest.mark.parametrize("kw,field", [
    (dict(bad_words_ids=[]), "bad_words_ids"), (dict(bad_words_ids=[[1, 128]]), "bad_words_ids"),
    (dict(sequence_bias=[[[1], float("inf")]]), "sequence_bias"), (dict(sequence_bias={(): 1.0}), "sequence_bias"),
    (dict(typical_p=0.0), "typical_p"), (dict(epsilon_cutoff=1.0), "epsilon_cutoff"), (dict(eta_cutoff=-0.1),
                                                                                         "eta_cutoff"),
    (dict(exponential_decay_length_penalty=(2, 0.0), eos_token_id=2), "exponential_decay_length_penalty"),
    (dict(exponential_decay_length_penalty=(2, 1.1)), "exponential_decay_length_penalty"),
    (dict(forced_eos_token_id=[]), "forced_eos_token_id"), (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(stop_strings=""), "stop_strings"), (dict(suppress_tokens=[-1]), "suppress_tokens"),
    (dict(renormalize_logits=1), "renormalize_logits"), (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size")])
def test_bad_values_name_their_field(kw, field):
    with pytest.raises(ValueError, match=rf"^GenerationConfig.{field}="):
        GenerationConfig(**kw).validate(128)


def test_hf_generate_kwargs_carry_every_option():
    from jaxgen.crosscheck.hf_side import hf_generate_kwargs

    cfg = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, stop_strings=("x",), **CASES[0])
    kw = hf_generate_kwargs(cfg, N, prompt_length=T, tokenizer="TOK")
    for name in CASES[0]:
        if name not in VLLM:
            assert kw[name] == (list(map(list, cfg.to_dict()[name])) if name == "bad_words_ids" else
                                cfg.to_dict()[name]), name
    assert kw["stop_strings"] == ["x"] and kw["tokenizer"] == "TOK" and len(kw["logits_processor"]) == 1
    transformers.GenerationConfig(**{k: v for k, v in kw.items() if k not in ("tokenizer", "logits_processor")})
