"""Gemma 4 text (``gemma4_text``) at transformers parity: tiny random checkpoints (dense, and with the MoE block)
through the conversion path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import BASE, GEMMA4, GEMMA4_MOE, assert_generate_matches_transformers, left_pad

PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3, 99, 12], [7, 8, 9, 40, 41]]


@pytest.fixture(scope="module", params=["dense", "moe"])
def gemma4(tmp_path_factory, request):
    """(jaxgen model loaded from a save_pretrained folder, float32 transformers model)."""
    import transformers

    import jaxgen

    torch.manual_seed(0)
    overrides = GEMMA4 if request.param == "dense" else GEMMA4_MOE
    ref = transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(**{**BASE, **overrides})).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms, router scales and layer scalars start at 1: randomise them so a dropped one shows
        for name, p in [*ref.named_parameters(), *ref.named_buffers()]:
            if p.ndim == 1 and ("norm" in name or "layer_scalar" in name or "scale" in name):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("gemma4")
    ref.save_pretrained(folder)
    return jaxgen.load_model(str(folder), dtype="float32"), ref


def _batch():
    from jaxgen.decode.loop import prompt_positions

    ids, mask = left_pad(PROMPTS)
    return ids, mask, np.asarray(prompt_positions(jnp.asarray(mask)))


def test_gemma4_config_shapes_and_cache(gemma4):
    from checkpoints_convert import shapes

    import jaxgen.model
    from jaxgen.parallel import sharding

    model, ref = gemma4
    cfg = model.config
    assert [s.attention.kv_source for s in cfg.layers] == [None, None, None, 2, 1]
    assert [cfg.layer_head_dim(i) for i in range(5)] == [16, 32, 16, 16, 32]
    assert shapes.param_shapes(cfg) == jaxgen.model.param_shapes(cfg)
    # transformers counts parameters; its layer scalars are (saved) buffers, one per layer.
    assert cfg.num_params() == model.num_params() == ref.num_parameters() + cfg.num_hidden_layers
    c = model.init_cache(3, 8)
    assert c.keys[3] is None and c.values[4] is None
    assert c.keys[0].shape == (3, 2, 8, 16) and c.keys[1].shape == (3, 1, 8, 32)
    assert jax.tree.structure(sharding.cache_sharding(cfg, sharding.make_mesh(1, 1))) == jax.tree.structure(c)


def test_gemma4_logits_match_transformers(gemma4):
    model, ref = gemma4
    ids, mask, pos = _batch()
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    with torch.no_grad():
        want = ref(t(ids), attention_mask=t(mask), position_ids=t(pos)).logits.numpy()
        want1 = ref(t(ids[:1])).logits.numpy()
    got, _ = model.step(model.params, jnp.asarray(ids), jnp.asarray(pos), model.init_cache(2, ids.shape[1]),
                        jnp.asarray(mask))
    err = np.abs(np.asarray(got) - want)[mask.astype(bool)].max()
    got1, _ = model.step(model.params, jnp.asarray(ids[:1]), jnp.asarray(pos[:1]), model.init_cache(1, ids.shape[1]),
                         jnp.asarray(mask[:1]))
    err1 = np.abs(np.asarray(got1) - want1).max()
    print(f"gemma4 logits max abs err: padded batch {err:.2e}, batch 1 {err1:.2e}")
    assert err <= 1e-4 and err1 <= 1e-4, (err, err1)


def test_gemma4_prefill_then_decode_equals_full_forward(gemma4):
    model, _ = gemma4
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
    real = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(outs, 1)[real], np.asarray(full)[real], atol=5e-5, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_gemma4_generate_matches_transformers(gemma4, num_beams):
    ids, mask, _ = _batch()
    assert_generate_matches_transformers(*gemma4, ids, mask, num_beams)


def test_gemma4_bad_configs_are_config_errors():
    from jaxgen.config import ModelConfig
    from jaxgen.errors import ConfigError

    raw = {"model_type": "gemma4_text", **BASE, **GEMMA4}
    ModelConfig.from_hf_dict(raw)
    ModelConfig.from_hf_dict({"model_type": "gemma4_text", **BASE, **GEMMA4_MOE})
    for change, field in [(dict(enable_moe_block=True), "num_experts"),
                          (dict(GEMMA4_MOE, top_k_experts=5), "top_k_experts"),
                          (dict(use_bidirectional_attention="all"), "use_bidirectional_attention"),
                          (dict(num_kv_shared_layers=5), "num_kv_shared_layers"),
                          (dict(per_layer_config={"1": {"sliding_window": 3}}), "per_layer_config"),
                          (dict(rope_parameters={"sliding_attention": {"rope_type": "yarn", "rope_theta": 1.0},
                                                 "full_attention": {"rope_theta": 1.0}}), "rope_type")]:
        with pytest.raises(ConfigError, match=field):
            ModelConfig.from_hf_dict({**raw, **change})
