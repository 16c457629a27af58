"""checkpoints_convert.shapes: the flax-free shape table equals the model's own, and conversion imports no flax."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers")

import checkpoints_convert  # noqa: E402
from checkpoints_convert import shapes, tables  # noqa: E402
from conftest import BASE, VARIANTS  # noqa: E402
from jaxgen.config import SUPPORTED_MODEL_TYPES, ModelConfig  # noqa: E402
from jaxgen.model import param_shapes  # noqa: E402

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxgen", "demo", "model")
# Beyond the shared variants: every bias flag on, and a layer count past 10 (names sort differently from numbers).
EXTRA = {
    "llama_all_biases": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    "qwen3_bias_tied_12_layers": ("Qwen3Config", dict(attention_bias=True, tie_word_embeddings=True,
                                                      num_hidden_layers=12)),
    # Mixture of experts (tests/test_moe.py has the parity checks): stacked experts, router, shared expert, and
    # dense layers among sparse ones.
    "mixtral_moe": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe_shared": ("Qwen2MoeConfig", dict(num_experts=4, moe_intermediate_size=32,
                                                shared_expert_intermediate_size=48, decoder_sparse_step=2)),
    "qwen3_moe_mixed": ("Qwen3MoeConfig", dict(num_hidden_layers=3, num_experts=8, moe_intermediate_size=32,
                                               mlp_only_layers=[1])),
}


def variant_config(name: str) -> ModelConfig:
    if name in VARIANTS:
        cls, _, overrides = VARIANTS[name]
    else:
        cls, overrides = EXTRA[name]
    return ModelConfig.from_hf_dict(getattr(transformers, cls)(**{**BASE, **overrides}).to_dict())


def test_every_supported_family_has_a_shape_table():
    assert set(shapes.FAMILIES) == set(tables.TABLES) == set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("name", [*VARIANTS, *EXTRA])
def test_shape_table_equals_the_model(name):
    config = variant_config(name)
    assert shapes.param_shapes(config) == param_shapes(config)


def test_shape_table_equals_the_bundled_model():
    config = ModelConfig.from_pretrained(BUNDLED)
    table = shapes.param_shapes(config)
    assert table == param_shapes(config)
    assert "lm_head.kernel" not in table and len(table) == 2 + 9 * config.num_hidden_layers


def test_shape_table_follows_the_config_flags():
    # The flags that add parameters each add exactly the ones expected (a check independent of flax).
    base = variant_config("llama_gqa")
    qwen2, qwen3, tied = variant_config("qwen2_bias"), variant_config("qwen3_qknorm"), variant_config("llama_mqa_tied")
    layer0 = lambda cfg: {k for k in shapes.param_shapes(cfg) if k.startswith("model.layers.0.")}  # noqa: E731
    extra = lambda cfg: sorted(k.removeprefix("model.layers.0.") for k in layer0(cfg) - layer0(base))  # noqa: E731
    assert extra(qwen2) == [f"self_attn.{p}_proj.bias" for p in "kqv"]
    assert extra(qwen3) == ["self_attn.k_norm.weight", "self_attn.q_norm.weight"]
    assert shapes.param_shapes(qwen3)["model.layers.0.self_attn.q_proj.kernel"] == (64, 4 * 32)
    assert set(shapes.param_shapes(base)) - set(shapes.param_shapes(tied)) == {"lm_head.kernel"}


def _fresh_python(code: str, stub_jaxgen: bool) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter; with ``stub_jaxgen``, ``jaxgen`` is an empty package, so only the
    submodules checkpoints_convert asks for are imported (not what ``jaxgen/__init__.py`` imports)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(checkpoints_convert.__file__)))
    stub = ("import sys, types; p = types.ModuleType('jaxgen'); "
            f"p.__path__ = [{os.path.join(root, 'jaxgen')!r}]; sys.modules['jaxgen'] = p\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", (stub if stub_jaxgen else "") + code], capture_output=True,
                          text=True, env=env, timeout=120)


CHECK_IMPORTS = """
import sys
import checkpoints_convert, checkpoints_convert.cli, checkpoints_convert.convert, checkpoints_convert.export
import checkpoints_convert.shapes
banned = sorted(m for m in sys.modules
                if m.split('.')[0] in ('flax', 'jax', 'torch') or m.startswith(('jaxgen.model', 'jaxgen.nn')))
assert not banned, banned
"""


def test_conversion_modules_import_no_flax():
    proc = _fresh_python(CHECK_IMPORTS, stub_jaxgen=True)
    assert proc.returncode == 0, proc.stderr


def test_conversion_imports_no_flax_through_jaxgen_package():
    # The whole chain, jaxgen/__init__.py included (it must import its submodules lazily).
    proc = _fresh_python(CHECK_IMPORTS, stub_jaxgen=False)
    assert proc.returncode == 0, proc.stderr


VLM_TEXT = dict(BASE, head_dim=16)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=14)
VLMS = {  # the vision side too (tests/test_vision_*.py have the parity checks)
    "gemma3": lambda: transformers.Gemma3Config(
        text_config=dict(VLM_TEXT, model_type="gemma3_text"), mm_tokens_per_image=4,
        vision_config=dict(_VISION, image_size=56, model_type="siglip_vision_model")),
    "minicpmv4_6": lambda: transformers.MiniCPMV4_6Config(
        text_config=dict(VLM_TEXT, model_type="qwen3_5_text"), vision_config=dict(_VISION, image_size=98),
        image_token_id=5, insert_layer_id=1),
    "minicpmv4_6_two_merges": lambda: transformers.MiniCPMV4_6Config(
        text_config=dict(VLM_TEXT, model_type="qwen3_5_text"), vision_config=dict(_VISION, image_size=98),
        image_token_id=5, merger_times=2, downsample_mode="4x"),
}


@pytest.mark.parametrize("name", list(VLMS))
def test_shape_table_equals_the_model_with_its_vision_side(name):
    config = ModelConfig.from_hf_dict(VLMS[name]().to_dict())
    assert config.vision is not None
    table = shapes.param_shapes(config)
    assert table == param_shapes(config)
    assert any(k.startswith("vision.vision_tower.") for k in table)
