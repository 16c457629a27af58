"""Qwen3.5 hybrid models: Gated DeltaNet pieces, the layer, and the text family end to end against transformers.

Random float32 inputs: chunked prefill form == token-by-token recurrence (<= 1e-5), both == transformers'
``torch_chunk_gated_delta_rule`` / ``torch_recurrent_gated_delta_rule`` / ``causal_conv1d_*``; left padding
leaves the state exactly as the unpadded row's (batch invariance). Then a tiny Qwen3_5ForCausalLM (3 linear + 1
full layer): logits, prefill + decode == full forward, greedy and beam tokens equal to transformers' ``generate``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")

from conftest import QWEN35_EXPERTS, QWEN3_NEXT_EXPERTS  # noqa: E402
from jaxgen.nn import linear_attention as la  # noqa: E402

B, T, HK, HV, DK, DV = 2, 37, 2, 4, 8, 16  # T not a multiple of the chunk: exercises the tail padding


def _inputs(seed=0, t=T):
    r = np.random.default_rng(seed)
    q, k = (r.normal(size=(B, t, HK, DK)).astype(np.float32) for _ in range(2))
    v = r.normal(size=(B, t, HV, DV)).astype(np.float32)
    g = -np.log1p(np.exp(r.normal(size=(B, t, HV)))).astype(np.float32) * r.uniform(0.05, 2, size=(1, 1, HV))
    beta = (1 / (1 + np.exp(-r.normal(size=(B, t, HV))))).astype(np.float32)
    s0 = r.normal(size=(B, HV, DK, DV)).astype(np.float32) * 0.5
    return q, k, v, g.astype(np.float32), beta, s0


@pytest.mark.parametrize("chunk", [8, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrent(chunk, with_state):
    q, k, v, g, beta, s0 = _inputs()
    s0 = s0 if with_state else None
    o_r, s_r = la.recurrent_gated_delta_rule(q, k, v, g, beta, s0)
    o_c, s_c = la.chunked_gated_delta_rule(q, k, v, g, beta, s0, chunk_size=chunk)
    np.testing.assert_allclose(o_c, o_r, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s_c, s_r, atol=1e-5, rtol=0)


def test_delta_rule_matches_transformers():
    q, k, v, g, beta, s0 = _inputs(1)
    tt = lambda x: torch.from_numpy(np.asarray(x))  # noqa: E731
    kw = dict(initial_state=tt(s0), output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_hc, s_hc = hf.torch_chunk_gated_delta_rule(*map(tt, (q, k, v)), g=tt(g), beta=tt(beta), chunk_size=8, **kw)
    o_hr, s_hr = hf.torch_recurrent_gated_delta_rule(*map(tt, (q, k, v)), g=tt(g), beta=tt(beta), **kw)
    o_c, s_c = la.chunked_gated_delta_rule(q, k, v, g, beta, s0, chunk_size=8)
    o_r, s_r = la.recurrent_gated_delta_rule(q, k, v, g, beta, s0)
    np.testing.assert_allclose(o_c, o_hc.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(s_c, s_hc.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(o_r, o_hr.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(s_r, s_hr.numpy(), atol=1e-5, rtol=0)


def test_left_padding_keeps_state():
    """Row 1 is row 0's last ``T - P`` tokens behind ``P`` pads of garbage: same outputs and same final state."""
    q, k, v, g, beta, _ = _inputs(2)
    p = 11
    for x in (q, k, v, g, beta):
        x[1, p:] = x[0, :T - p]
        x[1, :p] = 7.0 if x is not g else -3.0  # garbage the mask must neutralise
    mask = np.ones((B, T), np.int32)
    mask[1, :p] = 0
    for fn in (la.recurrent_gated_delta_rule, lambda *a, **kw: la.chunked_gated_delta_rule(*a, chunk_size=8, **kw)):
        out, s = fn(q, k, v, g, beta, None, mask=mask)
        ref_out, ref_s = fn(*(x[:1, :T - p] for x in (q, k, v, g, beta)), None)
        np.testing.assert_allclose(s[1], ref_s[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(out[1, p:], ref_out[0], atol=1e-5, rtol=0)


def test_decode_continues_prefill():
    """Chunked prefill of T tokens then one recurrent step each == chunked over all of them."""
    q, k, v, g, beta, _ = _inputs(3, t=20)
    full, s_full = la.chunked_gated_delta_rule(q, k, v, g, beta, None, chunk_size=8)
    out, s = la.chunked_gated_delta_rule(*(x[:, :15] for x in (q, k, v, g, beta)), None, chunk_size=8)
    outs = [out]
    for i in range(15, 20):
        o, s = la.recurrent_gated_delta_rule(*(x[:, i:i + 1] for x in (q, k, v, g, beta)), s)
        outs.append(o)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s, s_full, atol=1e-5, rtol=0)


def test_causal_conv1d_matches_transformers_and_streams():
    r = np.random.default_rng(4)
    c, kk, t = 12, 4, 9
    x = r.normal(size=(B, t, c)).astype(np.float32)
    w = r.normal(size=(c, kk)).astype(np.float32)
    ref = hf.causal_conv1d_fn(torch.from_numpy(x).transpose(1, 2), torch.from_numpy(w), None, activation="silu")
    out, state = la.causal_conv1d(x, w, None)
    np.testing.assert_allclose(out, ref.transpose(1, 2).numpy(), atol=1e-6, rtol=0)
    # Prefill 6 then stream 3 single tokens through the state: same outputs.
    out6, st = la.causal_conv1d(x[:, :6], w, None)
    pieces = [out6]
    for i in range(6, t):
        o, st = la.causal_conv1d(x[:, i:i + 1], w, st)
        pieces.append(o)
    np.testing.assert_allclose(np.concatenate(pieces, 1), out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(st, state, atol=0, rtol=0)
    # A masked decode step keeps the state; left padding inside the prefill equals the unpadded row.
    _, st_masked = la.causal_conv1d(x[:, :1], w, state, mask=np.zeros((B, 1), np.int32))
    np.testing.assert_array_equal(st_masked, state)
    xp = np.concatenate([np.full((B, 3, c), 5.0, np.float32), x], 1)
    mask = np.concatenate([np.zeros((B, 3), np.int32), np.ones((B, t), np.int32)], 1)
    outp, stp = la.causal_conv1d(xp, w, None, mask=mask)
    np.testing.assert_allclose(outp[:, 3:], out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(stp, state, atol=0, rtol=0)


def test_gated_rms_norm_matches_transformers():
    r = np.random.default_rng(5)
    x, z = (r.normal(size=(3, 5, DV)).astype(np.float32) for _ in range(2))
    w = r.normal(size=(DV,)).astype(np.float32)
    mod = hf.Qwen3_5RMSNormGated(DV, eps=1e-6)
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(w))
        ref = mod(torch.from_numpy(x), torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(la.gated_rms_norm(jnp.asarray(x), jnp.asarray(z), jnp.asarray(w), 1e-6), ref,
                               atol=1e-6, rtol=0)


# --- the layer module against transformers' Qwen3_5GatedDeltaNet --------------------------------------------------

def _hf_layer_and_ours(seed=0):
    from flax import nnx

    from jaxgen.config import LinearAttentionSpec

    cfg = hf.Qwen3_5TextConfig(hidden_size=64, linear_num_key_heads=HK, linear_num_value_heads=HV,
                               linear_key_head_dim=DK, linear_value_head_dim=DV, linear_conv_kernel_dim=4,
                               layer_types=["linear_attention"], num_hidden_layers=1)
    torch.manual_seed(seed)
    ref = hf.Qwen3_5GatedDeltaNet(cfg, 0).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        ref.A_log.copy_(torch.randn_like(ref.A_log) * 0.5)
    spec = LinearAttentionSpec(HK, HV, DK, DV, 4)
    ours = la.GatedDeltaNet(64, spec, cfg.rms_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                            precision=jax.lax.Precision.HIGHEST, rngs=nnx.Rngs(0))
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    for name in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"):
        getattr(ours, name).kernel[...] = jnp.asarray(sd[f"{name}.weight"].T)
    ours.conv1d.weight[...] = jnp.asarray(sd["conv1d.weight"])
    ours.dt_bias[...], ours.A_log[...] = jnp.asarray(sd["dt_bias"]), jnp.asarray(sd["A_log"])
    ours.norm.weight[...] = jnp.asarray(sd["norm.weight"])
    return ref, ours, spec


def test_gated_deltanet_layer_matches_transformers():
    ref, ours, spec = _hf_layer_and_ours()
    x = np.random.default_rng(6).normal(size=(2, 21, 64)).astype(np.float32)
    mask = np.ones((2, 21), np.int64)
    mask[1, :5] = 0  # left padding
    with torch.no_grad():
        want = ref(torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).numpy()
    conv0 = jnp.zeros((2, spec.conv_kernel - 1, spec.conv_dim))
    rec0 = jnp.zeros((2, HV, DK, DV))
    got, conv, rec = ours(jnp.asarray(x), conv0, rec0, jnp.asarray(mask))
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1, 5:], want[1, 5:], atol=1e-5, rtol=0)
    # The padded row's states equal those of the same tokens unpadded.
    _, conv_u, rec_u = ours(jnp.asarray(x[1:, 5:]), conv0[:1], rec0[:1], jnp.ones((1, 16), jnp.int32))
    np.testing.assert_allclose(conv[1], conv_u[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(rec[1], rec_u[0], atol=1e-5, rtol=0)
    # Prefill 16 then 5 one-token decode steps (recurrent form) == the full pass.
    _, c, r = ours(jnp.asarray(x[:, :16]), conv0, rec0, jnp.asarray(mask[:, :16]))
    outs = []
    for i in range(16, 21):
        o, c, r = ours(jnp.asarray(x[:, i:i + 1]), c, r, jnp.ones((2, 1), jnp.int32))
        outs.append(o)
    np.testing.assert_allclose(np.concatenate(outs, 1), got[:, 16:], atol=1e-5, rtol=0)


# --- the Qwen3.5 text family end to end: save_pretrained -> jaxgen.load_model (conversion tables) -----------

QWEN35 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, vocab_size=128, initializer_range=0.3,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
              linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16,
              linear_conv_kernel_dim=4, tie_word_embeddings=False)
# Qwen3.5-MoE and Qwen3-Next: the same hybrid layers with conftest's experts (Qwen3-Next: in_proj_qkvz / in_proj_ba
# fused per key head, 2 value heads per key head here).
QWEN35_MOE = dict(QWEN35, **QWEN35_EXPERTS)
QWEN3_NEXT = dict(QWEN35, **QWEN3_NEXT_EXPERTS)
PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3, 99, 12], [7, 8, 9, 40, 41]]
HF_CLASSES = {"dense": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", QWEN35),
              "moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM", QWEN35_MOE),
              "next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", QWEN3_NEXT)}


@pytest.fixture(scope="module", params=list(HF_CLASSES))
def qwen35(tmp_path_factory, request):
    """(jaxgen model loaded from a save_pretrained folder through the conversion tables, transformers model):
    Qwen3.5 text, Qwen3.5-MoE text and Qwen3-Next."""
    import transformers

    import jaxgen

    torch.manual_seed(0)
    cfg_cls, model_cls, fields = HF_CLASSES[request.param]
    ref = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**fields)).eval()
    with torch.no_grad():  # norms start at 0 / 1; randomise them so (1 + w) and the gated norm are exercised
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith(("A_log", "dt_bias")):
                p.copy_(torch.randn_like(p) * 0.3)
    folder = tmp_path_factory.mktemp("qwen3_5")
    ref.save_pretrained(folder)
    return jaxgen.load_model(str(folder), dtype="float32"), ref


def test_qwen35_shape_table_and_cache_kinds(qwen35):
    from checkpoints_convert import shapes

    import jaxgen.model
    from jaxgen import cache as kv
    from jaxgen.parallel import sharding

    model, _ = qwen35
    cfg = model.config
    assert [s.linear is not None for s in cfg.layers] == [True, True, False, True]
    mlps = {"qwen3_5_text": ["gated"] * 4, "qwen3_5_moe_text": ["moe"] * 4, "qwen3_next": ["moe", "gated", "moe", "moe"]}
    assert [s.mlp for s in cfg.layers] == mlps[cfg.model_type]
    assert shapes.param_shapes(cfg) == jaxgen.model.param_shapes(cfg)
    assert cfg.num_params() == model.num_params() == sum(p.numel() for p in qwen35[1].parameters())
    c = model.init_cache(3, 8)
    assert c.keys[0] is None and c.conv[2] is None and c.recurrent[0].shape == (3, 4, 8, 16)
    assert c.conv[0].shape == (3, 3, 2 * 2 * 8 + 4 * 16)
    # reorder_rows gathers every row-leading leaf (the states too) with one take each.
    c = c.replace(recurrent=tuple(r if r is None else r + jnp.arange(3.0)[:, None, None, None]
                                  for r in c.recurrent))
    r = kv.reorder_rows(c, jnp.asarray([2, 2, 0]))
    np.testing.assert_array_equal(r.recurrent[0][:, 0, 0, 0], [2, 2, 0])
    # The sharding table has the cache's exact pytree structure.
    mesh = sharding.make_mesh(1, 1)
    assert jax.tree.structure(sharding.cache_sharding(cfg, mesh)) == jax.tree.structure(c)


def _batch():
    from conftest import left_pad

    from jaxgen.decode.loop import prompt_positions

    ids, mask = left_pad(PROMPTS)
    return ids, mask, np.asarray(prompt_positions(jnp.asarray(mask)))


def test_qwen35_logits_match_transformers(qwen35):
    model, ref = qwen35
    ids, mask, pos = _batch()
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    with torch.no_grad():
        want = ref(t(ids), attention_mask=t(mask), position_ids=t(pos)).logits.numpy()
        want1 = ref(t(ids[:1])).logits.numpy()
    got, _ = model.step(model.params, jnp.asarray(ids), jnp.asarray(pos), model.init_cache(2, ids.shape[1]),
                        jnp.asarray(mask))
    real = mask.astype(bool)
    err = np.abs(np.asarray(got) - want)[real].max()
    # Relative to the logits' scale (~10 here): float32 rounding in the delta rule's two summation orders. On the
    # MoE variant (1.4e-5 relative) transformers run in float64 puts jaxgen closer to it than float32 torch is.
    assert err <= 2e-5 * np.abs(want).max(), err
    got1, _ = model.step(model.params, jnp.asarray(ids[:1]), jnp.asarray(pos[:1]), model.init_cache(1, ids.shape[1]),
                         jnp.asarray(mask[:1]))
    assert np.abs(np.asarray(got1) - want1).max() <= 2e-5 * np.abs(want1).max()
    # Batch invariance: the left-padded row's logits equal the same prompt run alone.
    n = len(PROMPTS[1])
    alone, _ = model.step(model.params, jnp.asarray(ids[1:, -n:]), jnp.asarray(pos[1:, -n:]), model.init_cache(1, n),
                          jnp.ones((1, n), jnp.int32))
    # Same bound as above: XLA:CPU picks its product kernels by row count, so 22 rows and 5 rows sum in other orders.
    np.testing.assert_allclose(np.asarray(got)[1, -n:], np.asarray(alone)[0], atol=2e-5 * np.abs(want1).max(), rtol=0)


def test_qwen35_error_is_float32_rounding(qwen35):
    # transformers in float64 is the exact answer here: jaxgen's float32 logits stay within a small multiple of
    # transformers' own float32 distance from it, so the tolerances above measure rounding, not a mismatch.
    import copy

    model, ref = qwen35
    ids, mask, pos = _batch()
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    exact = copy.deepcopy(ref).double()
    if hasattr(exact, "set_experts_implementation"):  # torch's grouped_mm has no float64 kernel
        exact.set_experts_implementation("eager")
    with torch.no_grad():
        want = exact(t(ids), attention_mask=t(mask), position_ids=t(pos)).logits.numpy()
        torch32 = ref(t(ids), attention_mask=t(mask), position_ids=t(pos)).logits.double().numpy()
    got, _ = model.step(model.params, jnp.asarray(ids), jnp.asarray(pos), model.init_cache(2, ids.shape[1]),
                        jnp.asarray(mask))
    real = mask.astype(bool)
    ours = np.abs(np.asarray(got, np.float64) - want)[real].max()
    theirs = np.abs(torch32 - want)[real].max()
    assert ours <= 3 * theirs, (ours, theirs)


def test_qwen35_prefill_then_decode_equals_full_forward(qwen35):
    model, _ = qwen35
    ids, mask, pos = _batch()
    s, pre = ids.shape[1], 6
    full, _ = model.step(model.params, jnp.asarray(ids), jnp.asarray(pos), model.init_cache(2, s), jnp.asarray(mask))
    step = jax.jit(model.step)
    logits, cache = step(model.params, jnp.asarray(ids[:, :pre]), jnp.asarray(pos[:, :pre]), model.init_cache(2, s),
                         jnp.asarray(mask[:, :pre]))
    outs = [logits]
    for i in range(pre, s):
        logits, cache = step(model.params, jnp.asarray(ids[:, i:i + 1]), jnp.asarray(pos[:, i:i + 1]), cache,
                             jnp.asarray(mask[:, i:i + 1]))
        outs.append(logits)
    real = mask.astype(bool)  # padded positions' logits are meaningless (and differ: fully padded prefill rows)
    np.testing.assert_allclose(np.concatenate(outs, 1)[real], np.asarray(full)[real], atol=5e-5, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_qwen35_generate_matches_transformers(qwen35, num_beams):
    import jaxgen

    model, ref = qwen35
    ids, mask, _ = _batch()
    kw = dict(max_new_tokens=8, num_beams=num_beams, pad_token_id=3, eos_token_id=37)
    out = jaxgen.generate(model, ids, mask, **kw)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                            do_sample=False, **kw).numpy()
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :want.shape[1]], want)


def test_engine_equals_generate_alone():
    """Continuous batching of a hybrid model (Qwen3-Next: linear-attention and full-attention layers, experts and
    a dense MLP): prefill states written into free slots, copied for n samples, kept through cache shifts (small
    caps force them); every request equals ``jaxgen.generate`` on it alone."""
    import jaxgen
    from conftest import matrix_models

    model, _ = matrix_models("qwen3_next")
    rng = np.random.default_rng(4)
    prompts = [[int(x) for x in rng.integers(3, 128, n)] for n in (9, 16, 3, 12, 6)]
    G = jaxgen.GenerationConfig
    configs = [G(max_new_tokens=16 - i % 3, do_sample=i % 2 == 1, num_return_sequences=2 if i == 3 else 1,
                 top_logprobs=2, pad_token_id=0, eos_token_id=None) for i in range(len(prompts))]
    keys = list(jax.random.split(jax.random.key(5), len(prompts)))
    engine = jaxgen.Engine(model, max_slots=2, max_prompt_length=16, max_new_tokens=16, max_top_logprobs=2)
    outs = engine.generate(prompts, configs, keys)
    assert engine.stats["shifts"] >= 1 and engine.stats["copied_rows"] == 1, engine.stats
    for i, (p, c, k) in enumerate(zip(prompts, configs, keys)):
        want = jaxgen.generate(model, [p], config=c, key=k)
        np.testing.assert_array_equal(np.asarray(outs[i].sequences), np.asarray(want.sequences), err_msg=str(i))
        np.testing.assert_array_equal(np.asarray(outs[i].top_token_ids), np.asarray(want.top_token_ids))
        # another prompt bucket pads the prefill differently: the chunked delta rule's float32 rounding only
        np.testing.assert_allclose(np.asarray(outs[i].token_logprobs), np.asarray(want.token_logprobs), atol=1e-4)


def test_export_gives_back_the_transformers_state_dict(qwen35, tmp_path):
    """Export reads the tables backwards: every tensor equals transformers' own (Qwen3-Next's per-key-head fused
    projections regrouped back)."""
    from safetensors.numpy import load_file

    from checkpoints_convert import export

    model, ref = qwen35
    params = {".".join(map(str, path)): np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
              for path, v in model.params.flat_state()}
    export.save_hf_safetensors(tmp_path / "model.safetensors", model.config, params)
    got = load_file(str(tmp_path / "model.safetensors"))
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
