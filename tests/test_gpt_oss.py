"""gpt-oss (``gpt_oss``) at transformers parity: attention sinks, alternating sliding / full layers, YaRN, a biased
top-k-softmax router, experts with biases and the clamped SwiGLU, interleaved gate/up columns, and MXFP4 checkpoints
(dequantized at conversion, compared with transformers' own dequantization)."""

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
from checkpoints_convert import mxfp4  # noqa: E402
from conftest import BASE, GPT_OSS, assert_generate_matches_transformers, left_pad, matrix_checkpoint  # noqa: E402
from jaxgen.config import ModelConfig  # noqa: E402
from jaxgen.decode.loop import prompt_positions  # noqa: E402
from jaxgen.errors import CheckpointError, ConfigError  # noqa: E402
from jaxgen.model import make_step  # noqa: E402
from jaxgen.nn.moe import MoE  # noqa: E402

PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3, 99, 12], [7, 8, 9, 40, 41]]
MXFP4_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.embed_tokens",
                                                                     "lm_head", "model.layers.*.mlp.router"]}


@functools.lru_cache(maxsize=None)
def model() -> jaxgen.Model:
    return jaxgen.load_model(matrix_checkpoint("gpt_oss")[0], dtype="float32")


def batch():
    ids, mask = left_pad(PROMPTS)
    return ids, mask, np.asarray(prompt_positions(jnp.asarray(mask)))


def hf_logits(ref, ids, mask, pos):
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    with torch.no_grad():
        return ref(t(ids), attention_mask=t(mask), position_ids=t(pos)).logits.numpy()


def jax_logits(m, ids, mask, pos, impl="auto"):
    module = nnx.merge(m.graphdef, m.params)
    for layer in module.model.layers:
        if isinstance(layer.mlp, MoE):
            layer.mlp.impl = impl
    step = make_step(nnx.split(module)[0])
    logits, _ = step(m.params, jnp.asarray(ids), jnp.asarray(pos), m.init_cache(len(ids), ids.shape[1]),
                     jnp.asarray(mask))
    return np.asarray(logits)


def test_logits_match_transformers_on_every_expert_path():
    ids, mask, pos = batch()
    ref = matrix_checkpoint("gpt_oss")[1]
    want = hf_logits(ref, ids, mask, pos)
    real = mask.astype(bool)
    scale = np.abs(want[real]).max()
    for impl in ("auto", "gather", "ragged", "dense"):
        err = np.abs(jax_logits(model(), ids, mask, pos, impl) - want)[real].max()
        print(f"gpt-oss {impl}: max abs logit err {err:.2e} of |logit| <= {scale:.1f}")
        assert err <= 1e-5 * scale, (impl, err, scale)
    # The clamps bind somewhere (else this test would not check them): some gate or up value exceeds the limit.
    x = torch.randn(64, BASE["hidden_size"], generator=torch.Generator().manual_seed(0))
    experts = ref.model.layers[0].mlp.experts
    with torch.no_grad():
        assert float((x @ experts.gate_up_proj[0]).abs().max()) > GPT_OSS["swiglu_limit"]


def test_prefill_then_decode_equals_full_pass():
    m = model()
    ids, mask, pos = batch()
    s, pre = ids.shape[1], 6
    full = jax_logits(m, ids, mask, pos)
    step = jax.jit(m.step)
    logits, cache = step(m.params, jnp.asarray(ids[:, :pre]), jnp.asarray(pos[:, :pre]), m.init_cache(2, s),
                         jnp.asarray(mask[:, :pre]))
    outs = [np.asarray(logits)]
    for i in range(pre, s):  # past the window of 4: the sliding layer's mask matters
        logits, cache = step(m.params, jnp.asarray(ids[:, i:i + 1]), jnp.asarray(pos[:, i:i + 1]), cache,
                             jnp.asarray(mask[:, i:i + 1]))
        outs.append(np.asarray(logits))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(outs, 1)[real], full[real], atol=1e-5 * np.abs(full).max(), rtol=0)


def test_config_shapes_params_and_export_round_trip(tmp_path):
    from checkpoints_convert import export, shapes

    import jaxgen.model

    m, ref = model(), matrix_checkpoint("gpt_oss")[1]
    cfg = m.config
    assert [s.attention.window for s in cfg.layers] == [4, None] and all(s.attention.sinks for s in cfg.layers)
    assert shapes.param_shapes(cfg) == jaxgen.model.param_shapes(cfg)
    assert cfg.num_params() == m.num_params() == ref.num_parameters()
    # Export merges gate/up back column by column: transformers loads the exported file to the same logits.
    flat = {".".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(m.params)}
    shutil.copy(os.path.join(matrix_checkpoint("gpt_oss")[0], "config.json"), tmp_path / "config.json")
    export.save_hf_safetensors(tmp_path / "model.safetensors", cfg, flat)
    back = transformers.GptOssForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask, pos = batch()
    np.testing.assert_array_equal(hf_logits(back, ids, mask, pos), hf_logits(ref, ids, mask, pos))


def test_mxfp4_dequantization_equals_transformers():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3, 8, 2, 16), dtype=np.uint8)
    scales = rng.integers(118, 134, (3, 8, 2), dtype=np.uint8)
    want = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.bfloat16)
    got = mxfp4.dequantize(blocks, scales)
    assert got.shape == tuple(want.shape) == (3, 64, 8)
    np.testing.assert_array_equal(got.astype(np.float32), want.float().numpy())
    # quantize is its inverse on representable values
    b2, s2 = mxfp4.quantize(got.astype(np.float32))
    np.testing.assert_array_equal(mxfp4.dequantize(b2, s2).astype(np.float32), got.astype(np.float32))


def _mxfp4_checkpoint(folder, drop: str | None = None) -> dict[str, np.ndarray]:
    """The matrix gpt-oss checkpoint with its expert weights replaced by an MXFP4 pair each (as released ones are);
    returns the dequantized expert tensors."""
    from safetensors.numpy import load_file, save_file

    src = matrix_checkpoint("gpt_oss")[0]
    shutil.copytree(src, folder)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    dequantized = {}
    for key in [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        blocks, scales = mxfp4.quantize(tensors.pop(key))
        tensors[key + "_blocks"], tensors[key + "_scales"] = blocks, scales
        dequantized[key] = mxfp4.dequantize(blocks, scales).astype(np.float32)
    if drop:
        del tensors[drop]
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads(open(os.path.join(folder, "config.json")).read())
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**cfg, "quantization_config": MXFP4_CONFIG}, f)
    return dequantized


def test_mxfp4_checkpoint_converts_to_transformers_dequantized_model(tmp_path):
    dequantized = _mxfp4_checkpoint(tmp_path / "mxfp4")
    with pytest.warns(UserWarning, match="MXFP4"):
        got = jaxgen.load_model(str(tmp_path / "mxfp4"), dtype="float32")
    # transformers' model with the same dequantized experts (what it runs for an MXFP4 checkpoint without kernels)
    ref = transformers.GptOssForCausalLM(transformers.GptOssConfig(**{**BASE, **GPT_OSS})).eval()
    ref.load_state_dict(matrix_checkpoint("gpt_oss")[1].state_dict())
    with torch.no_grad():
        for key, value in dequantized.items():
            ref.get_parameter(key).copy_(torch.from_numpy(value))
    ids, mask, pos = batch()
    want = hf_logits(ref, ids, mask, pos)
    real = mask.astype(bool)
    err = np.abs(jax_logits(got, ids, mask, pos) - want)[real].max()
    assert err <= 1e-5 * np.abs(want[real]).max(), err
    # a half pair is an error that names the tensor and the format
    key = "model.layers.1.mlp.experts.down_proj_scales"
    _mxfp4_checkpoint(tmp_path / "half", drop=key)
    with pytest.raises(CheckpointError, match="down_proj.*MXFP4"):
        jaxgen.load_model(str(tmp_path / "half"), dtype="float32")


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_matches_transformers(num_beams):
    ids, mask, _ = batch()
    assert_generate_matches_transformers(model(), matrix_checkpoint("gpt_oss")[1], ids, mask, num_beams)


def test_bad_configs_are_config_errors():
    raw = {"model_type": "gpt_oss", **BASE, **GPT_OSS}
    ModelConfig.from_hf_dict(raw)
    ModelConfig.from_hf_dict({**raw, "quantization_config": MXFP4_CONFIG})
    for change, field in [(dict(num_experts_per_tok=5), "num_experts_per_tok"),
                          (dict(swiglu_limit=-1.0), "swiglu_limit"),
                          (dict(layer_types=["sliding_attention", "chunked_attention"]), "layer_types"),
                          (dict(quantization_config={"quant_method": "gptq"}), "quantized")]:
        with pytest.raises(ConfigError, match=field):
            ModelConfig.from_hf_dict({**raw, **change})
