"""DeepSeek-V3 (``deepseek_v3``) at transformers parity: multi-head latent attention over a latent cache, grouped
sigmoid routing with a correction bias, ungated shared experts, dense first layers, multi-token-prediction layers.

Two tiny random checkpoints saved with ``save_pretrained``: ``DEEPSEEK_V3`` (conftest; low-rank q, interleaved
rotary pairs, 4 expert groups) and ``PLAIN`` (plain q_proj, half-split rotary pairs, YaRN with ``mscale_all_dim``,
attention biases, one group, unnormalised weights).
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jaxgen  # noqa: E402
from conftest import (BASE, DEEPSEEK_V3, assert_generate_matches_transformers, left_pad,  # noqa: E402
                      randomize_vectors_and_save)
from jaxgen.config import ModelConfig  # noqa: E402
from jaxgen.decode.loop import prompt_positions  # noqa: E402
from jaxgen.errors import CheckpointError, ConfigError  # noqa: E402
from jaxgen.model import make_step  # noqa: E402
from jaxgen.nn.mla import MLA  # noqa: E402
from jaxgen.nn.moe import route_grouped  # noqa: E402

PLAIN = {**DEEPSEEK_V3, "q_lora_rank": None, "rope_interleave": False, "attention_bias": True, "n_group": 1,
         "topk_group": 1, "norm_topk_prob": False, "first_k_dense_replace": 2, "num_hidden_layers": 3,
         "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 1.0,
                             "mscale_all_dim": 0.8, "original_max_position_embeddings": 64}}
VARIANTS = {"deepseek_v3": DEEPSEEK_V3, "plain": PLAIN}
PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3, 99, 12], [7, 8, 9, 40, 41]]


@functools.lru_cache(maxsize=None)
def checkpoint(variant: str) -> tuple[str, object]:
    torch.manual_seed(0)
    ref = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**{**BASE, **VARIANTS[variant]})).eval()
    return randomize_vectors_and_save(ref, f"deepseek-{variant}"), ref


@functools.lru_cache(maxsize=None)
def model(variant: str) -> jaxgen.Model:
    return jaxgen.load_model(checkpoint(variant)[0], dtype="float32")


@functools.lru_cache(maxsize=None)
def step_with(variant: str, impl: str):
    """The jitted step with every latent-attention layer forced onto ``impl``."""
    m = model(variant)
    module = nnx.merge(m.graphdef, m.params)
    for layer in module.model.layers:
        if isinstance(layer.self_attn, MLA):
            layer.self_attn.impl = impl
    return jax.jit(make_step(nnx.split(module)[0]))


def batch():
    ids, mask = left_pad(PROMPTS)
    return ids, mask, np.asarray(prompt_positions(jnp.asarray(mask)))


def run(variant: str, impl: str, ids, mask, pos, prefill: int | None = None) -> np.ndarray:
    """Logits of the whole batch: one call, or ``prefill`` tokens then one token per call."""
    m, step = model(variant), step_with(variant, impl)
    cache = m.init_cache(len(ids), ids.shape[1])
    s = ids.shape[1]
    cuts = [(0, s)] if prefill is None else [(0, prefill)] + [(i, i + 1) for i in range(prefill, s)]
    outs = []
    for a, b in cuts:
        logits, cache = step(m.params, jnp.asarray(ids[:, a:b]), jnp.asarray(pos[:, a:b]), cache,
                             jnp.asarray(mask[:, a:b]))
        outs.append(np.asarray(logits))
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant):
    ids, mask, pos = batch()
    ref = checkpoint(variant)[1]
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    with torch.no_grad():
        want = ref(t(ids), attention_mask=t(mask), position_ids=t(pos)).logits.numpy()
    got = run(variant, "auto", ids, mask, pos)
    real = mask.astype(bool)
    err, scale = np.abs(got - want)[real].max(), np.abs(want[real]).max()
    print(f"deepseek {variant}: max abs logit err {err:.2e} of |logit| <= {scale:.1f}")
    assert err <= 1e-5 * scale, (err, scale)


@pytest.mark.parametrize("variant", VARIANTS)
def test_expand_and_absorb_agree_prefill_and_decode(variant):
    """Both latent-attention paths give the full pass's logits, in one call and token by token."""
    ids, mask, pos = batch()
    real = mask.astype(bool)
    full = run(variant, "expand", ids, mask, pos)
    # ("auto": expand for this prefill, absorb for the decode steps; it is what the other tests run)
    for impl, prefill in [("absorb", None), ("absorb", 6), ("expand", 6)]:
        got = run(variant, impl, ids, mask, pos, prefill)
        np.testing.assert_allclose(got[real], full[real], atol=1e-5 * np.abs(full).max(), rtol=0,
                                   err_msg=f"{impl} prefill={prefill}")


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_matches_transformers(num_beams):
    ids, mask, _ = batch()
    assert_generate_matches_transformers(model("plain"), checkpoint("plain")[1], ids, mask, num_beams, min_distinct=3)


@pytest.mark.parametrize("n_group,topk_group,top_k,normalize", [(4, 2, 3, True), (1, 1, 2, False), (8, 3, 3, True)])
def test_grouped_routing_equals_transformers_router(n_group, topk_group, top_k, normalize):
    """Random logits and a (partly negative) correction bias: same experts, same weights."""
    cfg = transformers.DeepseekV3Config(hidden_size=16, n_routed_experts=16, num_experts_per_tok=top_k,
                                        n_group=n_group, topk_group=topk_group, norm_topk_prob=normalize,
                                        routed_scaling_factor=1.7)
    router = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.weight.normal_(0, 1, generator=gen)
        router.e_score_correction_bias.normal_(0, 0.5, generator=gen)
    x = torch.randn(64, 16, generator=gen)
    with torch.no_grad():
        logits, want_w, want_ids = router(x)
    got_w, got_ids = route_grouped(jnp.asarray(logits.numpy()), jnp.asarray(router.e_score_correction_bias.numpy()),
                                   top_k, n_group, topk_group, normalize, 1.7)
    order = np.argsort(np.asarray(got_ids), -1), np.argsort(want_ids.numpy(), -1)  # torch's topk is unsorted
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(got_ids), order[0], -1),
                                  np.take_along_axis(want_ids.numpy(), order[1], -1))
    np.testing.assert_allclose(np.take_along_axis(np.asarray(got_w), order[0], -1),
                               np.take_along_axis(want_w.numpy(), order[1], -1), rtol=1e-6)


def test_config_shapes_params_and_latent_cache():
    from checkpoints_convert import shapes

    import jaxgen.model
    from jaxgen.parallel import sharding

    m, ref = model("deepseek_v3"), checkpoint("deepseek_v3")[1]
    cfg = m.config
    assert [s.mlp for s in cfg.layers] == ["gated", "moe", "moe"] and cfg.mtp_layers == 1
    assert shapes.param_shapes(cfg) == jaxgen.model.param_shapes(cfg)
    # transformers counts parameters; the routing bias is a (saved) buffer of one number per expert per MoE layer.
    assert cfg.num_params() == m.num_params() == ref.num_parameters() + 2 * 8
    c = m.init_cache(3, 10)
    assert c.keys[0].shape == (3, 1, 10, 16) and c.values[2].shape == (3, 1, 10, 8)  # latent, rotated shared key
    assert jax.tree.structure(sharding.cache_sharding(cfg, sharding.make_mesh(1, 1))) == jax.tree.structure(c)


def test_multi_token_prediction_layers_are_dropped_but_other_extra_layers_are_errors(tmp_path):
    """Released checkpoints carry the MTP layer as model.layers.{num_hidden_layers}; transformers ignores it."""
    from safetensors.numpy import load_file, save_file

    src = checkpoint("deepseek_v3")[0]
    tensors = load_file(os.path.join(src, "model.safetensors"))
    extra = {k.replace("model.layers.2.", "model.layers.3."): v for k, v in tensors.items()
             if k.startswith("model.layers.2.")}
    extra["model.layers.3.eh_proj.weight"] = np.zeros((64, 128), np.float32)
    for name, layers in [("mtp", 1), ("none", 0)]:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        save_file({**tensors, **extra}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "num_nextn_predict_layers": layers}))
        if layers:
            got = jaxgen.load_model(str(folder), dtype="float32")
            a, b = jax.tree.leaves(got.params), jax.tree.leaves(model("deepseek_v3").params)
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        else:
            with pytest.raises(CheckpointError, match="model.layers.3"):
                jaxgen.load_model(str(folder), dtype="float32")


def test_bad_configs_are_config_errors():
    raw = {"model_type": "deepseek_v3", **BASE, **DEEPSEEK_V3}
    ModelConfig.from_hf_dict(raw)
    for change, field in [(dict(num_key_value_heads=2), "num_key_value_heads"),
                          (dict(topk_method="greedy"), "topk_method"),
                          (dict(scoring_func="softmax"), "scoring_func"),
                          (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
                          (dict(n_group=3), "n_group"),
                          (dict(topk_group=5), "topk_group"),
                          (dict(num_experts_per_tok=5), "num_experts_per_tok"),
                          (dict(routed_scaling_factor=0), "routed_scaling_factor"),
                          (dict(quantization_config={"quant_method": "fp8", "fmt": "e4m3"}), "quantized")]:
        with pytest.raises(ConfigError, match=field):
            ModelConfig.from_hf_dict({**raw, **change})
