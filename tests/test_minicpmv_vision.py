"""MiniCPM-V 4.6's image encoder (jaxgen.nn.minicpmv) against transformers' ``get_image_features``.

A tiny random checkpoint with a real processor (tests/vlm_minicpmv.py); the processor's own ``pixel_values`` /
``target_sizes`` go into both; the features (``torch.cat`` of ``pooler_output``) must agree to 1e-5 in float32.
The HF -> jaxgen renaming here is the test's own (the conversion code builds on ``checkpoints_convert.shapes.minicpmv_vision_shapes``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import vlm_minicpmv as vlm  # noqa: E402
from jaxgen.config import ModelConfig, VisionConfig  # noqa: E402
from jaxgen.nn import minicpmv  # noqa: E402
from checkpoints_convert.shapes import minicpmv_vision_shapes as minicpmv_param_shapes  # noqa: E402
from jaxgen.nn.minicpmv import MiniCPMVImageEncoder  # noqa: E402

TOL = 1e-5


def vision_config(hf_config, **overrides) -> VisionConfig:
    """jaxgen's VisionConfig for a transformers ``MiniCPMV4_6Config`` (jaxgen's own parse), with ``overrides``."""
    return dataclasses.replace(ModelConfig.from_hf_dict(hf_config.to_dict()).vision, **overrides)


def hf_to_jaxgen(state_dict) -> dict[str, np.ndarray]:
    """transformers' image-side weights under jaxgen's names: ``model.`` stripped; Linear ``weight`` -> ``kernel``
    transposed; the patch Conv2d ``[D, C, p, p]`` -> a dense ``[C*p*p, D]`` kernel; Embedding ``weight`` ->
    ``embedding``; LayerNorm ``weight`` / ``bias`` kept."""
    out = {}
    for name, tensor in state_dict.items():
        name = name.removeprefix("model.")
        if not name.startswith(("vision_tower.", "merger.")):
            continue
        a = tensor.detach().float().numpy()
        if name.endswith("patch_embedding.weight"):
            out[name.replace(".weight", ".kernel")] = a.reshape(a.shape[0], -1).T
        elif name.endswith("position_embedding.weight"):
            out[name.replace(".weight", ".embedding")] = a
        elif name.endswith(".weight") and a.ndim == 2:
            out[name.replace(".weight", ".kernel")] = a.T
        else:
            out[name] = a
    return out


def load_encoder(hf_model, config: VisionConfig) -> MiniCPMVImageEncoder:
    arrays = hf_to_jaxgen(hf_model.state_dict())
    abstract = nnx.eval_shape(lambda: MiniCPMVImageEncoder(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    names = {".".join(map(str, path)): path for path in flat}
    assert sorted(names) == sorted(arrays)
    for name, path in names.items():
        assert tuple(flat[path].shape) == arrays[name].shape, name
        flat[path] = flat[path].replace(jnp.asarray(arrays[name]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@nnx.jit(static_argnums=(2, 3))
def encode(encoder, pixel_values, target_sizes, downsample_mode=None):
    return encoder(pixel_values, target_sizes, downsample_mode)


def hf_features(model, inputs, downsample_mode=None) -> np.ndarray:
    with torch.no_grad():
        out = model.get_image_features(inputs["pixel_values"], inputs["target_sizes"],
                                       downsample_mode=downsample_mode)
    return torch.cat(out.pooler_output, dim=0).numpy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("minicpmv"))
    vlm.minicpmv_checkpoint(folder, seed=0)
    model = transformers.MiniCPMV4_6ForConditionalGeneration.from_pretrained(folder).eval()
    return model, vlm.load_processor(folder), load_encoder(model, vision_config(model.config))


I = vlm.IMAGE_TOKEN
# name -> (prompts, images per prompt, downsample_mode, expected target_sizes, expected image tokens)
CASES = {
    "one_image": ([f"Look: {I}"], [[(60, 120)]], "16x", [(4, 12)], 3),
    "sliced": ([f"Look: {I}"], [[(150, 330)]], "16x", [(4, 12), (8, 8), (8, 8), (8, 8)], 15),
    "two_images": ([f"{I} and {I}"], [[(84, 84), (112, 224)]], "16x", [(8, 8), (4, 12), (8, 8), (8, 8)], 15),
    "two_prompts": ([f"A {I}", f"B {I} {I}"], [[(60, 120)], [(200, 260), (84, 84)]], "16x",
                    [(4, 12), (8, 8), (8, 8), (8, 8), (8, 8), (8, 8), (8, 8)], 27),
    "4x": ([f"Look: {I}"], [[(150, 330)]], "4x", [(6, 12), (10, 6), (10, 6), (10, 6)], 63),
}


def process(processor, prompts, images, mode):
    pil = [[vlm.image(h, w, seed=h * 1000 + w) for h, w in row] for row in images]
    flat = pil[0] if len(prompts) == 1 else pil
    return processor(text=prompts if len(prompts) > 1 else prompts[0], images=flat, downsample_mode=mode,
                     return_tensors="pt")


@pytest.mark.parametrize("case", list(CASES))
def test_features_match_transformers(checkpoint, case):
    model, processor, encoder = checkpoint
    prompts, images, mode, sizes, n_tokens = CASES[case]
    inputs = process(processor, prompts, images, mode)
    assert [tuple(s) for s in inputs["target_sizes"].tolist()] == sizes
    assert inputs["pixel_values"].shape == (1, 3, vlm.PATCH_SIZE, vlm.PATCH_SIZE * sum(h * w for h, w in sizes))
    # the placeholders the features replace: one image token per feature row, over all prompts
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == n_tokens

    want = hf_features(model, inputs, mode)
    target_sizes = minicpmv.static_sizes(inputs["target_sizes"])
    assert minicpmv.num_image_features(encoder.config, target_sizes, mode) == n_tokens
    got = np.asarray(encode(encoder, jnp.asarray(inputs["pixel_values"].numpy()), target_sizes, mode))
    assert got.shape == want.shape == (n_tokens, model.config.text_config.hidden_size)
    err = float(np.abs(got - want).max())
    assert err <= TOL, f"{case}: max abs diff {err:.2e}"
    # the features are a real signal, not something that would match by accident
    assert float(np.abs(want).max()) > 0.1


def test_downsample_mode_from_config_and_eager(checkpoint):
    """``"4x"`` set in the config (no call argument), run eagerly, gives the same features as the jitted call."""
    model, processor, encoder = checkpoint
    inputs = process(processor, [f"x {I}"], [[(200, 260)]], "4x")
    want = hf_features(model, inputs, "4x")
    four = load_encoder(model, vision_config(model.config, downsample_mode="4x"))
    pixels, sizes = jnp.asarray(inputs["pixel_values"].numpy()), minicpmv.static_sizes(inputs["target_sizes"])
    got = np.asarray(four(pixels, sizes))
    assert got.shape == want.shape == (100, model.config.text_config.hidden_size)
    assert float(np.abs(got - want).max()) <= TOL
    np.testing.assert_allclose(np.asarray(encode(encoder, pixels, sizes, "4x")), got, atol=TOL, rtol=0)


def test_packed_and_padded_layouts_agree(checkpoint, monkeypatch):
    """The tower's two attention layouts (one packed row with slice segments; one padded row per slice) give
    the same features: the sliced image takes the padded one by default, forced packed here."""
    model, processor, encoder = checkpoint
    inputs = process(processor, [f"x {I}"], [[(150, 330)]], "16x")
    want = hf_features(model, inputs)
    pixels, sizes = jnp.asarray(inputs["pixel_values"].numpy()), minicpmv.static_sizes(inputs["target_sizes"])
    assert minicpmv._Layout(sizes).padded
    layout = minicpmv._Layout

    class Packed(layout):
        def __init__(self, sizes):
            super().__init__(sizes)
            if self.padded:  # redo as one packed row with a segment per slice
                self.padded = False
                lengths = [h * w for h, w in sizes]
                self.segments = jnp.asarray(np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)[None])

    monkeypatch.setattr(minicpmv, "_Layout", Packed)
    got = np.asarray(encoder(pixels, sizes))
    assert float(np.abs(got - want).max()) <= TOL


def test_merger_times_2(tmp_path):
    """Two downsampling merges (the first keeps the vision width, the last projects): 8x8 grids -> 1 token each."""
    folder = str(tmp_path)
    vlm.minicpmv_checkpoint(folder, seed=3, merger_times=2)
    model = transformers.MiniCPMV4_6ForConditionalGeneration.from_pretrained(folder).eval()
    processor = vlm.load_processor(folder)
    inputs = process(processor, [f"{I} {I}"], [[(84, 84), (224, 224)]], "16x")
    want = hf_features(model, inputs)
    encoder = load_encoder(model, vision_config(model.config))
    sizes = minicpmv.static_sizes(inputs["target_sizes"])
    got = np.asarray(encode(encoder, jnp.asarray(inputs["pixel_values"].numpy()), sizes))
    assert got.shape == want.shape == (6, model.config.text_config.hidden_size)
    assert float(np.abs(got - want).max()) <= TOL


def test_generate_accepts_processor_outputs(checkpoint):
    """The fixture's processor outputs drive transformers' forward and generate (batch of 1 and 2 images)."""
    model, processor, _ = checkpoint
    inputs = process(processor, [f"A {I}", f"B {I} {I}"], [[(60, 120)], [(112, 224), (84, 84)]], "16x")
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "target_sizes"}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 2)


# ---- static pieces against transformers' helpers ----------------------------------------------------------------
def test_nearest_position_ids_match_transformers():
    from transformers.vision_utils import get_vision_nearest_position_ids

    rng = np.random.default_rng(0)
    for side in [1, 2, 7, 16, 19, 27, 32, 64, 70, 73]:
        sizes = tuple((int(h), int(w)) for h, w in rng.integers(1, 130, size=(12, 2)))
        sizes += ((side, side), (2 * side, side), (1, 3 * side))  # coordinates exactly on the boundaries
        want = get_vision_nearest_position_ids(torch.tensor(sizes), side).numpy()
        np.testing.assert_array_equal(minicpmv.nearest_position_ids(sizes, side), want, err_msg=f"side {side}")


def test_window_order_matches_transformers():
    from transformers.vision_utils import get_vision_window_index

    sizes = ((4, 12), (8, 8), (6, 2), (2, 2))
    grid_thw = torch.tensor([(1, h, w) for h, w in sizes])
    want, cu = get_vision_window_index(grid_thw, spatial_merge_size=1, window_size=2, patch_size=1)
    got = minicpmv.block_index(sizes, (2, 2))
    np.testing.assert_array_equal(got.reshape(-1), want.numpy())
    np.testing.assert_array_equal(np.arange(0, got.size + 1, 4), cu.numpy())


# ---- parameter shapes ------------------------------------------------------------------------------------------
SHAPE_CONFIGS = [
    dict(),
    dict(merger_times=3, num_hidden_layers=2, insert_layer_id=0, text_hidden_size=48),
    dict(hidden_size=48, intermediate_size=80, num_attention_heads=3, image_size=64, patch_size=8, num_channels=1),
]


@pytest.mark.parametrize("overrides", SHAPE_CONFIGS)
def test_param_shapes_match_module(overrides):
    config = VisionConfig(**{**dict(kind="minicpmv4_6", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                    num_attention_heads=2, image_size=98, patch_size=14, text_hidden_size=64,
                                    image_token_id=4, insert_layer_id=1), **overrides})
    abstract = nnx.eval_shape(lambda: MiniCPMVImageEncoder(config, rngs=nnx.Rngs(0)))
    actual = {".".join(map(str, path)): tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(abstract))}
    assert minicpmv_param_shapes(config) == actual


def test_param_shapes_match_checkpoint(checkpoint):
    """Every image-side tensor of the transformers checkpoint, renamed, has the shapes function's name and shape."""
    model, _, _ = checkpoint
    renamed = {name: a.shape for name, a in hf_to_jaxgen(model.state_dict()).items()}
    assert renamed == minicpmv_param_shapes(vision_config(model.config))


def test_bad_inputs(checkpoint):
    model, _, encoder = checkpoint
    p = vlm.PATCH_SIZE
    with pytest.raises(ValueError, match="packed"):
        encoder(jnp.zeros((1, 3, p, 63 * p)), ((8, 8),))
    with pytest.raises(ValueError, match="divisible"):
        encoder(jnp.zeros((1, 3, p, 12 * p)), ((2, 6),))
    with pytest.raises(ValueError, match="downsample_mode"):
        encoder(jnp.zeros((1, 3, p, 64 * p)), ((8, 8),), "8x")
    with pytest.raises(ValueError, match="2x2"):
        MiniCPMVImageEncoder(vision_config(model.config, window_kernel_size=(3, 3)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="insert_layer_id"):
        MiniCPMVImageEncoder(vision_config(model.config, insert_layer_id=3), rngs=nnx.Rngs(0))


def test_float32_uses_highest_precision(checkpoint):
    _, _, encoder = checkpoint
    assert encoder.merger.mlp[0].linear_1.precision == jax.lax.Precision.HIGHEST
    assert encoder.vision_tower.encoder.layers[0].self_attn.precision == jax.lax.Precision.HIGHEST
