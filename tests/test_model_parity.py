"""End-to-end parity of jaxgen's model with transformers (PyTorch), on every tiny variant of ``conftest.VARIANTS``.

* float32 logits equal transformers' at every real position, batch of one and left-padded batch (<= 1e-4);
* prefill + one-token-at-a-time decoding through the KV cache equals one full forward pass;
* bfloat16 logits are as close to transformers' bfloat16 ones as bfloat16 allows;
* full-size configs (Llama-3-8B, Mistral-7B, Qwen2.5-7B, Qwen3-8B) build and trace abstractly, with no allocation.

Run with ``pytest -s`` to see the measured differences per variant (one line per check, and a table at the end).

Every check runs on every variant. Compiling costs ~1.2 s of CPU per program shape, and each variant needs five
(batch of one, padded batch, prefill, one-token step, bfloat16), so the combinations that add the least are marked
``slow``: the batch-of-one and bfloat16 checks of variants whose only difference from another variant is a RoPE
frequency table or a head count already covered (the padded-batch and decode checks still run on those).
``pytest -m "not slow"`` runs the core set.
"""

from __future__ import annotations

import copy
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

import jaxgen  # noqa: E402
from conftest import VARIANTS, hf_checkpoint, randomize_vectors_and_save  # noqa: E402
from jaxgen.cache import init_cache  # noqa: E402
from jaxgen.config import ModelConfig  # noqa: E402
from jaxgen.decode.loop import prompt_positions  # noqa: E402
from jaxgen.model import abstract_model, make_step  # noqa: E402

# Longer than the sliding window (4) of mistral_window / qwen2_window, and than max_position_embeddings (12) of
# llama_dynamic_rope, so windows and dynamic-NTK growth are both exercised.
SEQ = 20
LENGTHS = (20, 14, 9)  # real tokens per row of the left-padded batch (11 pads on the last row: more than a window)
PREFILL = 12  # decode test: prompt columns run in one call, the rest one token at a time; every row has a real
# token among them (a row of pure padding is not something generate produces)

F32_ATOL = 1e-4
# Cached decoding vs one full pass, both jaxgen float32: the only differences are summation orders (matmuls of
# another shape), i.e. float32 rounding, which scales with the logits. With these random tiny models the logits
# reach |10|, and the rounding floor is ~1-3e-5 absolute: jaxgen's batch-of-1 and batch-of-3 runs of the same row
# differ by that much, and so do transformers' own cached and uncached passes (1.5-2e-5), while a real cache bug
# (wrong slot, mask, window or position) moves logits by >= 1e-2. Hence 1e-5 relative to the largest logit.
DECODE_RTOL = 1e-5

# Variants on which the batch-of-one / bfloat16 checks are not marked slow: one per attention layout, window kind,
# bias/norm kind, tied head, plus the RoPE types whose batch-of-one (dynamic: max over the batch) or bfloat16
# (yarn: cos/sin scaled by the attention factor) path differs.
CORE_BATCH_OF_ONE = ("llama_gqa", "llama_mqa_tied", "llama_dynamic_rope", "mistral_window", "qwen2_bias",
                     "qwen3_qknorm", "gpt2", "gemma", "gemma2", "gemma3", "phi3", "phi3_partial_longrope")
# Gemma: its (1 + w) norm scales before the cast back to bfloat16, which is where the two orders differ.
CORE_BF16 = ("llama_gqa", "llama_mqa_tied", "llama_yarn_rope", "mistral_window", "qwen2_bias", "qwen3_qknorm",
             "gemma2")


def variants(core: tuple[str, ...]) -> list:
    return [pytest.param(v, id=v, marks=() if v in core else pytest.mark.slow) for v in VARIANTS]


RESULTS: dict[str, dict[str, str]] = {}  # variant -> check -> measured figure, printed at the end of the module


def record(variant: str, check: str, text: str) -> None:
    RESULTS.setdefault(variant, {})[check] = text
    print(f"\n[parity] {variant:20s} {check:8s} {text}")


@pytest.fixture(scope="module", autouse=True)
def summary_table():
    yield
    if RESULTS:
        checks = ["f32-b1", "f32-pad", "decode", "bf16"]
        print("\n[parity] summary (max abs diff vs transformers; decode: vs jaxgen full pass)")
        for variant, row in RESULTS.items():
            print(f"[parity] {variant:20s} " + " | ".join(f"{c}: {row.get(c, '-')}" for c in checks))


# --- the models ---------------------------------------------------------------------------------------------------



@functools.lru_cache(maxsize=None)
def checkpoint(variant: str) -> tuple[str, torch.nn.Module]:
    """The shared tiny model of ``variant`` with random norm weights and biases, saved; (folder, float32 model).

    transformers initialises RMSNorm weights to 1 and biases to 0, which would hide a norm weight or a bias that
    is dropped, swapped (q_norm/k_norm, input/post-attention norm) or applied in the wrong place.
    """
    _, shared = hf_checkpoint(variant)
    model = copy.deepcopy(shared)  # the shared model stays as other test files expect it
    return randomize_vectors_and_save(model, variant), model


@functools.lru_cache(maxsize=None)
def hf_model(variant: str, dtype: str = "float32") -> torch.nn.Module:
    model = checkpoint(variant)[1]
    return model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))


@functools.lru_cache(maxsize=None)
def jax_model(variant: str, dtype: str = "float32"):
    """(Model, jitted step): one jit per variant and dtype, shared by every test of this module."""
    model = jaxgen.load_model(checkpoint(variant)[0], dtype=dtype)
    return model, jax.jit(model.step)


def is_dynamic(variant: str) -> bool:
    rope = getattr(hf_model(variant).config, "rope_parameters", None) or {}  # GPT-2 has none
    return rope.get("rope_type") == "dynamic"


def long_tensor(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.long)  # a copy: numpy views of jax arrays are read-only


def hf_logits(variant: str, ids: np.ndarray, mask: np.ndarray | None = None, positions: np.ndarray | None = None,
              dtype: str = "float32") -> np.ndarray:
    model = hf_model(variant, dtype)
    with torch.no_grad():
        if is_dynamic(variant):
            # Dynamic RoPE keeps the largest frequency set it has grown to until a call shorter than
            # max_position_embeddings resets it; a one-token call makes each reference independent of the last.
            model(torch.zeros((1, 1), dtype=torch.long))
        kwargs = {}
        if mask is not None:  # generate's way: the mask, and position ids that skip the left padding
            kwargs = dict(attention_mask=long_tensor(mask), position_ids=long_tensor(positions))
        return model(long_tensor(ids), **kwargs).logits.float().numpy()


def hf_cached_decode(variant: str, ids, mask, positions) -> np.ndarray:
    """transformers' own prefill + one-token steps through its DynamicCache (what its generate does)."""
    model = hf_model(variant)
    t = long_tensor
    with torch.no_grad():
        if is_dynamic(variant):
            model(torch.zeros((1, 1), dtype=torch.long))
        out = model(t(ids[:, :PREFILL]), attention_mask=t(mask[:, :PREFILL]), position_ids=t(positions[:, :PREFILL]),
                    use_cache=True)
        chunks, cache = [out.logits], out.past_key_values
        for i in range(PREFILL, ids.shape[1]):
            out = model(t(ids[:, i:i + 1]), attention_mask=t(mask[:, :i + 1]), position_ids=t(positions[:, i:i + 1]),
                        past_key_values=cache, use_cache=True)
            chunks.append(out.logits)
            cache = out.past_key_values
    return torch.cat(chunks, dim=1).float().numpy()


# --- the prompts --------------------------------------------------------------------------------------------------

def single_prompt() -> np.ndarray:
    return np.random.default_rng(0).integers(3, 128, (1, SEQ)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def padded_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, positions) ``int32[3, SEQ]``: left-padded rows of LENGTHS, pad id 0, generate's positions."""
    ids = np.random.default_rng(1).integers(3, 128, (len(LENGTHS), SEQ)).astype(np.int32)
    mask = (np.arange(SEQ)[None, :] >= SEQ - np.asarray(LENGTHS)[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, 0).astype(np.int32)
    positions = np.asarray(prompt_positions(jnp.asarray(mask)))
    np.testing.assert_array_equal(positions[0], np.arange(SEQ))  # the unpadded row counts from 0
    np.testing.assert_array_equal(positions[-1, -LENGTHS[-1]:], np.arange(LENGTHS[-1]))
    return ids, mask, positions


def jax_forward(variant: str, ids, mask, positions, dtype: str = "float32") -> np.ndarray:
    model, step = jax_model(variant, dtype)
    logits, cache = step(model.params, jnp.asarray(ids), jnp.asarray(positions), model.init_cache(len(ids), SEQ),
                         jnp.asarray(mask))
    assert int(cache.index) == ids.shape[1]
    return np.asarray(logits)


@functools.lru_cache(maxsize=None)
def padded_logits(variant: str) -> tuple[np.ndarray, np.ndarray]:
    """(jaxgen, transformers) float32 logits ``[3, SEQ, V]`` of the padded batch (padding rows are garbage)."""
    ids, mask, positions = padded_batch()
    return jax_forward(variant, ids, mask, positions), hf_logits(variant, ids, mask, positions)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


# --- float32 parity -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", variants(CORE_BATCH_OF_ONE))
def test_float32_logits_batch_of_one(variant):
    ids = single_prompt()
    ours = jax_forward(variant, ids, np.ones_like(ids), np.arange(SEQ, dtype=np.int32)[None])
    theirs = hf_logits(variant, ids)
    # How far each float32 run is from transformers in float64: jaxgen must be about as exact as transformers is.
    exact = copy.deepcopy(hf_model(variant)).double()
    with torch.no_grad():
        if is_dynamic(variant):
            exact(torch.zeros((1, 1), dtype=torch.long))
        exact = exact(long_tensor(ids)).logits.numpy()
    diff, ours_err, theirs_err = max_abs(ours, theirs), max_abs(ours, exact), max_abs(theirs, exact)
    record(variant, "f32-b1", f"{diff:.1e}")
    print(f"[parity] {variant:20s} f64-ref  jaxgen f32 err {ours_err:.1e}, transformers f32 err {theirs_err:.1e} "
          f"(logit scale {np.abs(exact).max():.1f})")
    chex.assert_trees_all_close(ours, theirs, atol=F32_ATOL, rtol=0)
    assert ours_err <= max(3 * theirs_err, 1e-5)


def test_float32_logits_left_padded_batch(variant):
    ours, theirs = padded_logits(variant)
    real = padded_batch()[1] > 0
    assert np.isfinite(ours).all()  # padding rows included: fully masked queries must not produce NaN
    diff = max_abs(ours[real], theirs[real])
    record(variant, "f32-pad", f"{diff:.1e}")
    chex.assert_trees_all_close(ours[real], theirs[real], atol=F32_ATOL, rtol=0)


# --- cached decoding ----------------------------------------------------------------------------------------------

def test_prefill_then_decode_matches_full_forward(variant):
    model, step = jax_model(variant)
    ids, mask, positions = padded_batch()
    cache = model.init_cache(len(ids), SEQ)
    logits, cache = step(model.params, jnp.asarray(ids[:, :PREFILL]), jnp.asarray(positions[:, :PREFILL]), cache,
                         jnp.asarray(mask[:, :PREFILL]))
    chunks = [np.asarray(logits)]
    for i in range(PREFILL, SEQ):
        logits, cache = step(model.params, jnp.asarray(ids[:, i:i + 1]), jnp.asarray(positions[:, i:i + 1]), cache,
                             jnp.asarray(mask[:, i:i + 1]))
        chunks.append(np.asarray(logits))
    decoded = np.concatenate(chunks, axis=1)
    assert int(cache.index) == SEQ
    real = mask > 0

    # transformers' own cached decoding: the same cache semantics (slot-based window, left padding, positions).
    hf_decoded = hf_cached_decode(variant, ids, mask, positions)
    chex.assert_trees_all_close(decoded[real], hf_decoded[real], atol=F32_ATOL, rtol=0)

    full = padded_logits(variant)[0]
    diff = max_abs(decoded[real], full[real])
    if is_dynamic(variant):
        # Dynamic NTK rotates each key with the frequencies of the length at the time it was cached, so past
        # max_position_embeddings decoding differs from one full pass by design (transformers' too); the check
        # above against transformers' cached decoding is the parity check for this variant.
        record(variant, "decode", f"{max_abs(decoded[real], hf_decoded[real]):.1e} (vs transformers cached)")
        assert diff > 1e-2, "the dynamic variant should have grown its RoPE base past max_position_embeddings"
        return
    scale = float(np.abs(full[real]).max())
    record(variant, "decode", f"{diff:.1e} (logit scale {scale:.1f})")
    chex.assert_trees_all_close(decoded[real], full[real], atol=DECODE_RTOL * scale, rtol=0)


# --- bfloat16 -----------------------------------------------------------------------------------------------------

# Tolerances, measured on these variants (the fixtures' random weights, std 0.3, make activations large, so the
# bfloat16 noise is larger than a trained model's): rounding the weights to bfloat16 alone moves the float32 logits
# by 1.3-2.4% (RMS, relative to the logits' RMS); bfloat16 compute adds about as much, so jaxgen's and
# transformers' bfloat16 runs land 1.5-4.5% from the float32 truth and 1.2-2.5% (RMS) / <= 6% of the largest logit
# (max) from each other. The bounds leave a 2x margin on those figures; jaxgen must also be no further from
# float32 than transformers' own bfloat16 run (x1.5, measured <= 1.15). What this catches: a wrong dtype or cast,
# NaN/inf from a bfloat16 mask constant, a norm computed in bfloat16 (max diff 14% on qwen2_bias). What it cannot:
# reduction-precision choices within bfloat16 noise (e.g. attention scores accumulated in bfloat16, as
# transformers' eager path does) move these logits by less than the noise and pass.
BF16_REL_RMS = 0.05
BF16_REL_MAX = 0.12
BF16_MIN_ARGMAX_AGREEMENT = 0.85


@pytest.mark.parametrize("variant", variants(CORE_BF16))
def test_bfloat16_close_to_transformers_bfloat16(variant):
    model, _ = jax_model(variant, "bfloat16")
    assert {x.dtype for x in jax.tree_util.tree_leaves(model.params)} == {jnp.dtype(jnp.bfloat16)}
    ids, mask, positions = padded_batch()
    real = mask > 0
    ours = jax_forward(variant, ids, mask, positions, "bfloat16")[real]
    theirs = hf_logits(variant, ids, mask, positions, "bfloat16")[real]
    truth = padded_logits(variant)[1][real]  # transformers float32
    scale, spread = float(np.abs(truth).max()), rms(truth)
    diff = max_abs(ours, theirs)
    ours_err, theirs_err = rms(ours - truth), rms(theirs - truth)
    agree = np.mean(ours.argmax(-1) == theirs.argmax(-1))
    record(variant, "bf16", f"{diff:.2f} ({diff / scale:.1%} of max |logit| {scale:.1f}; RMS "
                            f"{rms(ours - theirs) / spread:.1%}; err vs f32 jaxgen {ours_err / spread:.1%} / "
                            f"transformers {theirs_err / spread:.1%}; argmax agree {agree:.0%})")
    assert rms(ours - theirs) <= BF16_REL_RMS * spread
    chex.assert_trees_all_close(ours, theirs, atol=BF16_REL_MAX * scale, rtol=0)
    assert ours_err <= 1.5 * theirs_err
    assert agree >= BF16_MIN_ARGMAX_AGREEMENT
    # Where the two disagree on the top token, it is a near tie in float32.
    rows = np.flatnonzero(ours.argmax(-1) != theirs.argmax(-1))
    gaps = np.abs(truth[rows, ours[rows].argmax(-1)] - truth[rows, theirs[rows].argmax(-1)])
    assert np.all(gaps <= BF16_REL_MAX * scale), gaps


# --- full-size configs, abstractly --------------------------------------------------------------------------------

# config.json of each model as published on the Hub (transformers 4.x schema), and its parameter count.
FULL_SIZE = {
    "Llama-3-8B": (dict(
        architectures=["LlamaForCausalLM"], attention_bias=False, bos_token_id=128000, eos_token_id=128001,
        hidden_act="silu", hidden_size=4096, intermediate_size=14336, max_position_embeddings=8192,
        model_type="llama", num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8, rms_norm_eps=1e-5,
        rope_scaling=None, rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
        vocab_size=128256), 8_030_261_248),
    "Mistral-7B-v0.1": (dict(
        architectures=["MistralForCausalLM"], bos_token_id=1, eos_token_id=2, hidden_act="silu", hidden_size=4096,
        intermediate_size=14336, max_position_embeddings=32768, model_type="mistral", num_attention_heads=32,
        num_hidden_layers=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096,
        tie_word_embeddings=False, torch_dtype="bfloat16", vocab_size=32000), 7_241_732_096),
    "Qwen2.5-7B": (dict(
        architectures=["Qwen2ForCausalLM"], bos_token_id=151643, eos_token_id=151643, hidden_act="silu",
        hidden_size=3584, intermediate_size=18944, max_position_embeddings=131072, max_window_layers=28,
        model_type="qwen2", num_attention_heads=28, num_hidden_layers=28, num_key_value_heads=4, rms_norm_eps=1e-6,
        rope_theta=1000000.0, sliding_window=131072, tie_word_embeddings=False, torch_dtype="bfloat16",
        use_sliding_window=False, vocab_size=152064), 7_615_616_512),
    "Qwen3-8B": (dict(
        architectures=["Qwen3ForCausalLM"], attention_bias=False, bos_token_id=151643, eos_token_id=151645,
        head_dim=128, hidden_act="silu", hidden_size=4096, intermediate_size=12288, max_position_embeddings=40960,
        max_window_layers=36, model_type="qwen3", num_attention_heads=32, num_hidden_layers=36,
        num_key_value_heads=8, rms_norm_eps=1e-6, rope_scaling=None, rope_theta=1000000, sliding_window=None,
        tie_word_embeddings=False, torch_dtype="bfloat16", use_sliding_window=False, vocab_size=151936),
        8_190_735_360),
}


def live_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays())


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_full_size_config_traces_without_allocating(name):
    raw, expected_params = FULL_SIZE[name]
    config = ModelConfig.from_hf_dict(raw)
    before = live_bytes()

    graphdef, params = nnx.split(abstract_model(config, jnp.bfloat16))
    leaves = jax.tree_util.tree_leaves(params)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    assert sum(int(np.prod(x.shape)) for x in leaves) == config.num_params() == expected_params

    batch, seq, capacity = 2, 16, 64
    cache = jax.eval_shape(lambda: init_cache(config, batch, capacity, jnp.bfloat16))
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    step = make_step(graphdef)
    logits, new_cache = jax.eval_shape(step, params, tokens, tokens, cache, tokens)
    assert (logits.shape, logits.dtype) == ((batch, seq, config.vocab_size), jnp.float32)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_cache, cache)
    kv = new_cache.keys[0]
    assert len(new_cache.keys) == config.num_hidden_layers
    assert kv.shape == (batch, config.num_key_value_heads, capacity, config.head_dim)
    # One position per row (what prefill asks for): logits [B, V].
    last = jax.ShapeDtypeStruct((batch,), jnp.int32)
    logits, _ = jax.eval_shape(step, params, tokens, tokens, cache, tokens, last)
    assert logits.shape == (batch, config.vocab_size)

    assert live_bytes() - before < 1 << 20  # nothing the size of a weight (>= 14 MiB here) was allocated
