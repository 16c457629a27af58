"""checkpoints_convert.export: jaxgen params -> Hugging Face safetensors, the conversion table read backwards."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from checkpoints_convert import export, load_hf_params, shapes  # noqa: E402
from conftest import BASE, VARIANTS  # noqa: E402
from jaxgen.config import ModelConfig  # noqa: E402
from jaxgen.errors import CheckpointError  # noqa: E402

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxgen", "demo", "model")
BUNDLED_FILE = os.path.join(BUNDLED, "model.safetensors")


def config_of(variant: str) -> ModelConfig:
    cls, _, overrides = VARIANTS[variant]
    return ModelConfig.from_hf_dict(getattr(transformers, cls)(**{**BASE, **overrides}).to_dict())


def random_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.param_shapes(config).items()}


def test_bundled_model_exports_to_its_own_file(tmp_path):
    config, params = load_hf_params(BUNDLED)
    out = tmp_path / "model.safetensors"
    export.save_hf_safetensors(out, config, params, "float32")
    want, got = safetensors_numpy.load_file(BUNDLED_FILE), safetensors_numpy.load_file(out)
    assert sorted(got) == sorted(want) and "lm_head.weight" not in got  # tied: no separate head
    for key, value in want.items():
        assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # Same header order and metadata too: retraining with the shared writer would not change the file's format.
    assert out.read_bytes() == open(BUNDLED_FILE, "rb").read()


def test_demo_training_saves_through_the_exporter(tmp_path):
    import jaxgen
    from jaxgen.demo import train

    model = jaxgen.load_model()  # the bundled model, as an NNX state tree like the one training produces
    hf_cfg = transformers.AutoConfig.from_pretrained(BUNDLED)
    tokenizer = transformers.AutoTokenizer.from_pretrained(BUNDLED)
    train.save_model(str(tmp_path), hf_cfg, model.config, tokenizer, model.params, "float32")
    assert (tmp_path / "model.safetensors").read_bytes() == open(BUNDLED_FILE, "rb").read()
    assert not hasattr(train, "hf_state_dict") and not hasattr(train, "write_safetensors")


@pytest.mark.parametrize("variant", ["llama_gqa", "llama_mqa_tied", "mistral_window", "qwen2_bias", "qwen3_qknorm"])
def test_export_then_convert_is_the_identity(tmp_path, variant):
    config = config_of(variant)
    params = random_params(config)
    (tmp_path / "config.json").write_text(getattr(transformers, VARIANTS[variant][0])(
        **{**BASE, **VARIANTS[variant][2]}).to_json_string())
    export.save_hf_safetensors(tmp_path / "model.safetensors", config, params)
    hf = safetensors_numpy.load_file(tmp_path / "model.safetensors")
    # transformers' layout: [out, in] weights under HF names, checked against an independent spelling.
    assert hf["model.layers.0.self_attn.q_proj.weight"].shape == (config.q_size, config.hidden_size)
    assert np.array_equal(hf["model.layers.1.mlp.down_proj.weight"], params["model.layers.1.mlp.down_proj.kernel"].T)
    assert ("lm_head.weight" in hf) == (not config.tie_word_embeddings)
    back_config, back = load_hf_params(tmp_path)
    assert back_config == config and sorted(back) == sorted(params)
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_export_casts_to_bfloat16(tmp_path):
    config = config_of("qwen2_bias")
    params = random_params(config)
    export.save_hf_safetensors(tmp_path / "model.safetensors", config, params, "bfloat16")
    header = open(tmp_path / "model.safetensors", "rb").read(20000)
    assert b'"BF16"' in header and b'"F32"' not in header and b'"format":"pt"' in header
    (tmp_path / "config.json").write_text(transformers.Qwen2Config(**BASE).to_json_string())
    _, back = load_hf_params(tmp_path)
    for name, value in params.items():
        assert back[name].dtype == np.dtype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(back[name], value.astype(ml_dtypes.bfloat16), err_msg=name)


def test_export_refuses_a_tree_that_does_not_fit_and_writes_nothing(tmp_path):
    config = config_of("llama_gqa")
    out = tmp_path / "model.safetensors"
    missing = random_params(config)
    del missing["model.layers.1.mlp.up_proj.kernel"]
    extra = dict(random_params(config), **{"model.layers.0.self_attn.q_proj.bias": np.zeros(config.q_size)})
    wrong = dict(random_params(config), **{"model.norm.weight": np.zeros(3)})
    for params, pattern in ((missing, "missing.*up_proj.kernel"), (extra, "unused.*q_proj.bias"),
                            (wrong, r"model.norm.weight has shape \(3,\)")):
        with pytest.raises(CheckpointError, match=pattern):
            export.save_hf_safetensors(out, config, params)
    assert os.listdir(tmp_path) == []


def test_failed_export_keeps_the_old_file(tmp_path, monkeypatch):
    config = config_of("llama_gqa")
    out = tmp_path / "model.safetensors"
    export.save_hf_safetensors(out, config, random_params(config, seed=0))
    old = out.read_bytes()

    def broken(path, specs, arrays, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_safetensors", broken)
    with pytest.raises(KeyboardInterrupt):
        export.save_hf_safetensors(out, config, random_params(config, seed=1))
    assert out.read_bytes() == old and os.listdir(tmp_path) == ["model.safetensors"]
