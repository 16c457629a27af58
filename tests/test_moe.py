"""Mixture-of-experts families (Mixtral, Qwen2-MoE, Qwen3-MoE) against transformers, and jaxgen.nn.moe's three
expert paths against each other.

Tiny random models (hidden 64, 4-8 experts, vocab 128, initializer_range 0.3, randomised norm weights) saved with
``save_pretrained`` (per-expert tensors, stacked at conversion) and loaded with ``jaxgen.load_model``.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jaxgen  # noqa: E402
from checkpoints_convert import export, load_hf_params, shapes  # noqa: E402
from conftest import BASE, MOE_VARIANTS, left_pad, randomize_vectors_and_save  # noqa: E402
from jaxgen.config import ModelConfig  # noqa: E402
from jaxgen.decode.loop import prompt_positions  # noqa: E402
from jaxgen.model import make_step, param_shapes  # noqa: E402
from jaxgen.nn.moe import MoE, route  # noqa: E402

SEQ, LENGTHS, PREFILL = 16, (16, 11, 6), 10
PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3], [7, 8, 9], [40, 41, 42, 43, 44, 45]]
RTOL = 1e-5  # of the largest |logit|: float32 rounding of different summation orders


def hf_config(variant: str):
    cls, _, overrides = MOE_VARIANTS[variant]
    return getattr(transformers, cls)(**{**BASE, **overrides})


@functools.lru_cache(maxsize=None)
def checkpoint(variant: str) -> tuple[str, object]:
    """(folder, float32 torch model) with random norm weights and biases, saved with save_pretrained."""
    torch.manual_seed(0)
    model = getattr(transformers, MOE_VARIANTS[variant][1])(hf_config(variant)).eval()
    return randomize_vectors_and_save(model, variant), model


@functools.lru_cache(maxsize=None)
def jax_model(variant: str) -> jaxgen.Model:
    return jaxgen.load_model(checkpoint(variant)[0], dtype="float32")


@functools.lru_cache(maxsize=None)
def step_with(variant: str, impl: str):
    """The jitted step with every MoE layer forced onto ``impl`` ("auto": the model's own choice)."""
    model = jax_model(variant)
    module = nnx.merge(model.graphdef, model.params)
    for layer in module.model.layers:
        if isinstance(layer.mlp, MoE):
            layer.mlp.impl = impl
    graphdef, _ = nnx.split(module)
    return jax.jit(make_step(graphdef))


def padded_batch():
    ids = np.random.default_rng(1).integers(3, 128, (len(LENGTHS), SEQ)).astype(np.int32)
    mask = (np.arange(SEQ)[None, :] >= SEQ - np.asarray(LENGTHS)[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, 0).astype(np.int32)
    return ids, mask, np.asarray(prompt_positions(jnp.asarray(mask)))


def jax_logits(variant, ids, mask, positions, impl="auto"):
    model = jax_model(variant)
    logits, _ = step_with(variant, impl)(model.params, jnp.asarray(ids), jnp.asarray(positions),
                                         model.init_cache(len(ids), ids.shape[1]), jnp.asarray(mask))
    return np.asarray(logits)


def hf_logits(variant, ids, mask=None, positions=None):
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    kw = {} if mask is None else dict(attention_mask=t(mask), position_ids=t(positions))
    with torch.no_grad():
        return checkpoint(variant)[1](t(ids), **kw).logits.float().numpy()


def assert_close(got, want, where=None, rtol=RTOL):
    if where is not None:
        got, want = got[where], want[where]
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    print(f"\n[moe] max abs diff {err:.2e} of |logit| <= {scale:.1f} ({err / scale:.1e} relative)")
    assert err <= rtol * scale, (err, scale)


# --- parity with transformers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", MOE_VARIANTS)
def test_logits_equal_transformers(variant):
    ids = np.random.default_rng(0).integers(3, 128, (1, SEQ)).astype(np.int32)
    positions = np.arange(SEQ, dtype=np.int32)[None]
    assert_close(jax_logits(variant, ids, np.ones_like(ids), positions), hf_logits(variant, ids))
    ids, mask, positions = padded_batch()
    assert_close(jax_logits(variant, ids, mask, positions), hf_logits(variant, ids, mask, positions), mask > 0)


@pytest.mark.parametrize("variant", MOE_VARIANTS)
def test_prefill_then_decode_equals_full_pass(variant):
    ids, mask, positions = padded_batch()
    model, step = jax_model(variant), step_with(variant, "auto")
    cache = model.init_cache(len(ids), SEQ)
    logits, cache = step(model.params, jnp.asarray(ids[:, :PREFILL]), jnp.asarray(positions[:, :PREFILL]), cache,
                         jnp.asarray(mask[:, :PREFILL]))
    chunks = [np.asarray(logits)]
    for i in range(PREFILL, SEQ):  # 3 tokens x top-k <= experts: these steps take the gather path
        logits, cache = step(model.params, jnp.asarray(ids[:, i:i + 1]), jnp.asarray(positions[:, i:i + 1]), cache,
                             jnp.asarray(mask[:, i:i + 1]))
        chunks.append(np.asarray(logits))
    assert_close(np.concatenate(chunks, axis=1), jax_logits(variant, ids, mask, positions), mask > 0)


@pytest.mark.parametrize("variant", MOE_VARIANTS)
def test_greedy_tokens_equal_transformers_generate(variant):
    ids, mask = left_pad(PROMPTS, pad=0)
    kw = dict(max_new_tokens=10, pad_token_id=0, eos_token_id=None, repetition_penalty=1.3)
    out = jaxgen.generate(jax_model(variant), ids, mask, **kw)
    with torch.no_grad():
        ref = checkpoint(variant)[1].generate(torch.tensor(ids, dtype=torch.long),
                                              attention_mask=torch.tensor(mask, dtype=torch.long),
                                              do_sample=False, **kw).numpy()
    assert min(len(set(row)) for row in ref[:, ids.shape[1]:].tolist()) >= 3, ref
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :ref.shape[1]], ref)


# --- the three expert paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["qwen2_moe"])  # one variant: three more compiles each
def test_gather_ragged_and_dense_paths_agree(variant):
    ids, mask, positions = padded_batch()
    dense = jax_logits(variant, ids, mask, positions, "dense")
    for impl in ("gather", "ragged"):
        assert_close(jax_logits(variant, ids, mask, positions, impl), dense, mask > 0)


def test_router_matches_transformers_order():
    """Softmax over all experts in float32, top-k, renormalise: the chosen ids and weights of MixtralTopKRouter."""
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    config = hf_config("mixtral")
    router = MixtralTopKRouter(config)
    torch.nn.init.normal_(router.weight, std=0.3)
    x = torch.randn(32, config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, scores, index = router(x)
    weights, ids = route(jnp.asarray(logits.numpy()), config.num_experts_per_tok, True)
    np.testing.assert_array_equal(np.asarray(ids), index.numpy())
    np.testing.assert_allclose(np.asarray(weights), scores.numpy(), rtol=1e-6)


# --- config, conversion, shapes -----------------------------------------------------------------------------------

def test_layer_kinds_follow_the_config():
    q3 = ModelConfig.from_hf_dict(hf_config("qwen3_moe").to_dict())
    assert [s.mlp for s in q3.layers] == ["moe", "gated", "moe"] and q3.layers[0].attention.qk_norm
    assert q3.layers[0].moe.top_k == 3 and q3.layers[0].moe.norm_topk_prob
    step2 = ModelConfig.from_hf_dict({**hf_config("qwen2_moe").to_dict(), "decoder_sparse_step": 2})
    assert [s.mlp for s in step2.layers] == ["gated", "moe"]
    q2 = ModelConfig.from_hf_dict(hf_config("qwen2_moe").to_dict())
    assert q2.layers[0].attention.qkv_bias and not q2.layers[0].attention.o_bias
    assert q2.layers[0].moe.shared_intermediate_size == 48 and not q2.layers[0].moe.norm_topk_prob
    no_bias = ModelConfig.from_hf_dict({**hf_config("qwen2_moe").to_dict(), "qkv_bias": False})
    assert not no_bias.layers[0].attention.qkv_bias and "bias" not in str(shapes.param_shapes(no_bias))
    mix = ModelConfig.from_hf_dict(hf_config("mixtral").to_dict())
    assert all(s.moe.num_experts == 8 and s.moe.norm_topk_prob for s in mix.layers)


@pytest.mark.parametrize("variant", MOE_VARIANTS)
def test_shape_table_and_param_count(variant):
    config = ModelConfig.from_hf_dict(hf_config(variant).to_dict())
    assert shapes.param_shapes(config) == param_shapes(config)
    assert config.num_params() == sum(p.numel() for p in checkpoint(variant)[1].parameters())


def test_per_expert_tensors_are_stacked():
    folder, hf = checkpoint("mixtral")
    _, params = load_hf_params(folder)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    gate_up, down = state["model.layers.1.mlp.experts.gate_up_proj"], state["model.layers.1.mlp.experts.down_proj"]
    inter = gate_up.shape[1] // 2
    np.testing.assert_array_equal(params["model.layers.1.mlp.experts.gate_proj"],
                                  gate_up[:, :inter].transpose(0, 2, 1))  # chunk(2): gate first
    np.testing.assert_array_equal(params["model.layers.1.mlp.experts.up_proj"], gate_up[:, inter:].transpose(0, 2, 1))
    np.testing.assert_array_equal(params["model.layers.1.mlp.experts.down_proj"], down.transpose(0, 2, 1))
    assert os.path.exists(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("variant", MOE_VARIANTS)
def test_export_writes_the_transformers_5_state_dict(tmp_path, variant):
    """Export merges the stacked experts back into transformers 5's fused ``gate_up_proj`` / ``down_proj``."""
    from safetensors.numpy import load_file

    folder, hf = checkpoint(variant)
    config, params = load_hf_params(folder)
    export.save_hf_safetensors(tmp_path / "model.safetensors", config, params)
    got = load_file(tmp_path / "model.safetensors")
    want = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
