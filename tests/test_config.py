"""ModelConfig parsing: transformers 4.x and 5.x ``config.json`` schemas describe the same model the same way.

The 4.x inputs are hand-written in the form the Hub's ``config.json`` files have (``rope_theta`` + ``rope_scaling``
with ``type`` or ``rope_type``, ``torch_dtype``, ``use_sliding_window`` + ``max_window_layers``). Their 5.x
counterparts are not hand-written: they are what transformers 5 itself writes for the same model
(``XConfig.from_dict(v4).to_dict()``: ``rope_parameters``, ``dtype``, ``layer_types``), so a change in transformers'
schema shows up here.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

transformers = pytest.importorskip("transformers")

from jaxgen.config import ModelConfig, RopeConfig  # noqa: E402
from jaxgen.errors import ConfigError  # noqa: E402

CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}

# --- 4.x-style config.json dicts (as on the Hub, trimmed of fields jaxgen ignores) -------------------------------
LLAMA31_8B = {  # meta-llama/Llama-3.1-8B: llama3 RoPE, written with `rope_type`
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "vocab_size": 128256,
}
LLAMA2_7B = {  # meta-llama/Llama-2-7b-hf: no num_key_value_heads (MHA), no rope_theta (default 10000)
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16", "vocab_size": 32000,
}
MISTRAL_7B_V01 = {  # mistralai/Mistral-7B-v0.1: 4096-token window on every layer
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 32000,
}
QWEN25_7B_YARN = {  # Qwen/Qwen2.5-7B-Instruct with the model card's YaRN recipe (old `type` key)
    "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 152064,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
}
QWEN3_8B = {  # Qwen/Qwen3-8B: head_dim given explicitly, no window
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 12288,
    "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3", "num_attention_heads": 32,
    "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_sliding_window": False, "vocab_size": 151936,
}
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
QWEN2_WINDOW = {**SMALL, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4,
                "max_window_layers": 1, "rope_theta": 10000.0, "torch_dtype": "float32"}
QWEN3_WINDOW = {**SMALL, "model_type": "qwen3", "head_dim": 32, "use_sliding_window": True, "sliding_window": 8,
                "max_window_layers": 2, "rope_theta": 10000.0, "torch_dtype": "float32"}
LLAMA_LINEAR_TYPE = {**SMALL, "model_type": "llama", "rope_theta": 10000.0,
                     "rope_scaling": {"type": "linear", "factor": 2.0}}
LLAMA_DYNAMIC_TYPE = {**SMALL, "model_type": "llama", "rope_theta": 20000.0,
                      "rope_scaling": {"type": "dynamic", "factor": 4.0}}
LLAMA_YARN_NO_ORIGINAL = {**SMALL, "model_type": "llama",  # YaRN without original_max_position_embeddings
                          "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16, "beta_slow": 2}}


V4_CASES = {
    "llama3.1-8b": pytest.param(LLAMA31_8B, id="llama3.1-8b"),
    "llama2-7b": pytest.param(LLAMA2_7B, id="llama2-7b"),
    "mistral-7b": pytest.param(MISTRAL_7B_V01, id="mistral-7b"),
    "qwen2.5-7b-yarn": pytest.param(QWEN25_7B_YARN, id="qwen2.5-7b-yarn"),
    "qwen3-8b": pytest.param(QWEN3_8B, id="qwen3-8b"),
    "qwen2-window": pytest.param(QWEN2_WINDOW, id="qwen2-window"),
    "qwen3-window": pytest.param(QWEN3_WINDOW, id="qwen3-window"),
    "llama-linear-type": pytest.param(LLAMA_LINEAR_TYPE, id="llama-linear-type"),
    "llama-dynamic-type": pytest.param(LLAMA_DYNAMIC_TYPE, id="llama-dynamic-type"),
    "llama-yarn-no-original": pytest.param(LLAMA_YARN_NO_ORIGINAL, id="llama-yarn-no-original"),
}


def v5_dict(v4: dict) -> dict:
    """What transformers 5 writes to config.json for the model a 4.x dict describes."""
    cls = getattr(transformers, CONFIG_CLASSES[v4["model_type"]])
    out = cls.from_dict(copy.deepcopy(v4)).to_dict()
    assert "rope_parameters" in out and "rope_scaling" not in out and "rope_theta" not in out  # really 5.x schema
    return out


def windows(config: ModelConfig) -> list[int | None]:
    return [config.layer_window(i) for i in range(config.num_hidden_layers)]


# --- 4.x and 5.x agree ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("v4", V4_CASES.values())
def test_v4_and_v5_schema_give_the_same_config(v4):
    assert ModelConfig.from_hf_dict(v4) == ModelConfig.from_hf_dict(v5_dict(v4))


@pytest.mark.parametrize("v4", [p.values[0] for p in V4_CASES.values()], ids=list(V4_CASES))
def test_per_layer_windows_agree(v4):
    a, b = ModelConfig.from_hf_dict(v4), ModelConfig.from_hf_dict(v5_dict(v4))
    assert windows(a) == windows(b)
    assert dataclasses.replace(a, layer_types=()) == dataclasses.replace(b, layer_types=())


def test_llama3_rope_fields_from_either_schema():
    for raw in (LLAMA31_8B, v5_dict(LLAMA31_8B)):
        c = ModelConfig.from_hf_dict(raw)
        assert c.rope == RopeConfig(rope_type="llama3", theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=8192)
        assert c.checkpoint_dtype == "bfloat16"  # `torch_dtype` (4.x) or `dtype` (5.x)
        assert c.eos_token_id == (128001, 128008, 128009)
        assert c.rms_norm_eps == 1e-5 and c.max_position_embeddings == 131072


@pytest.mark.parametrize("key", ["type", "rope_type"])
def test_rope_scaling_type_or_rope_type(key):
    raw = {**SMALL, "model_type": "llama", "rope_theta": 5e5, "rope_scaling": {key: "linear", "factor": 2.0}}
    c = ModelConfig.from_hf_dict(raw)
    assert (c.rope.rope_type, c.rope.theta, c.rope.factor) == ("linear", 5e5, 2.0)


def test_yarn_fields_and_fallback_to_max_position_embeddings():
    c = ModelConfig.from_hf_dict(QWEN25_7B_YARN)
    assert (c.rope.rope_type, c.rope.factor, c.rope.original_max_position_embeddings, c.rope.theta) == (
        "yarn", 4.0, 32768, 1e6)
    # transformers fills original_max_position_embeddings from max_position_embeddings when a YaRN config lacks it.
    c = ModelConfig.from_hf_dict(LLAMA_YARN_NO_ORIGINAL)
    assert c.rope.original_max_position_embeddings == 256
    assert (c.rope.beta_fast, c.rope.beta_slow) == (16, 2)
    assert v5_dict(LLAMA_YARN_NO_ORIGINAL)["rope_parameters"]["original_max_position_embeddings"] == 256


def test_default_rope_and_family_defaults():
    c = ModelConfig.from_hf_dict(LLAMA2_7B)
    assert c.rope == RopeConfig(rope_type="default", theta=10000.0)
    assert c.checkpoint_dtype == "float16"
    assert c.num_key_value_heads == 32  # missing num_key_value_heads means multi-head attention
    assert not (c.qkv_bias or c.o_bias or c.mlp_bias or c.qk_norm or c.tie_word_embeddings)


def test_rope_parameters_from_transformers_5_constructor():
    raw = transformers.LlamaConfig(**SMALL, rope_parameters=dict(rope_type="dynamic", factor=2.0,
                                                                 rope_theta=1234.0)).to_dict()
    c = ModelConfig.from_hf_dict(raw)
    assert (c.rope.rope_type, c.rope.factor, c.rope.theta) == ("dynamic", 2.0, 1234.0)


# --- sliding windows ----------------------------------------------------------------------------------------------

def test_mistral_window_on_every_layer():
    c = ModelConfig.from_hf_dict(MISTRAL_7B_V01)
    assert windows(c) == [4096] * 32
    c = ModelConfig.from_hf_dict(transformers.MistralConfig(**SMALL, sliding_window=4).to_dict())
    assert windows(c) == [4, 4, 4]
    c = ModelConfig.from_hf_dict({**MISTRAL_7B_V01, "sliding_window": None})  # Mistral-7B-v0.2 onwards
    assert windows(c) == [None] * 32


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_max_window_layers_vs_layer_types(family):
    v4 = QWEN2_WINDOW if family == "qwen2" else QWEN3_WINDOW
    window, first_sliding = v4["sliding_window"], v4["max_window_layers"]
    expected = [None if i < first_sliding else window for i in range(3)]
    v5 = v5_dict(v4)
    assert v5["layer_types"] == ["full_attention" if w is None else "sliding_attention" for w in expected]
    assert windows(ModelConfig.from_hf_dict(v4)) == expected  # use_sliding_window + max_window_layers (4.x)
    assert windows(ModelConfig.from_hf_dict(v5)) == expected  # layer_types (5.x)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_window_ignored_without_use_sliding_window(family):
    raw = {**SMALL, "model_type": family, "use_sliding_window": False, "sliding_window": 4, "max_window_layers": 0}
    assert windows(ModelConfig.from_hf_dict(raw)) == [None] * 3
    assert windows(ModelConfig.from_hf_dict(v5_dict(raw))) == [None] * 3


def test_qwen2_explicit_layer_types_are_respected():
    types = ["sliding_attention", "full_attention", "sliding_attention"]
    raw = transformers.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8, layer_types=types).to_dict()
    assert windows(ModelConfig.from_hf_dict(raw)) == [8, None, 8]


# --- heads and head_dim -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_head_counts(kv_heads):
    c = ModelConfig.from_hf_dict(transformers.LlamaConfig(**{**SMALL, "num_key_value_heads": kv_heads}).to_dict())
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, kv_heads, 16)
    assert (c.q_size, c.kv_size) == (64, 16 * kv_heads)


def test_explicit_head_dim():
    c = ModelConfig.from_hf_dict(transformers.Qwen3Config(**SMALL, head_dim=32).to_dict())
    assert (c.head_dim, c.q_size, c.kv_size, c.qk_norm) == (32, 128, 64, True)
    c = ModelConfig.from_hf_dict(QWEN3_8B)
    assert (c.head_dim, c.q_size, c.kv_size) == (128, 4096, 1024)
    c = ModelConfig.from_hf_dict({**SMALL, "model_type": "llama", "head_dim": None})  # null means hidden / heads
    assert c.head_dim == 16


def test_family_biases():
    assert (ModelConfig.from_hf_dict(QWEN2_WINDOW).qkv_bias, ModelConfig.from_hf_dict(QWEN2_WINDOW).o_bias) == (
        True, False)
    c = ModelConfig.from_hf_dict({**SMALL, "model_type": "llama", "attention_bias": True, "mlp_bias": True})
    assert (c.qkv_bias, c.o_bias, c.mlp_bias) == (True, True, True)


# --- errors name the field ----------------------------------------------------------------------------------------

def test_unknown_model_type_is_named():
    with pytest.raises(ConfigError, match="'mamba'.*not supported"):
        ModelConfig.from_hf_dict({**SMALL, "model_type": "mamba"})
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.from_hf_dict(SMALL)


@pytest.mark.parametrize("schema", ["v4", "v5"])
def test_unsupported_rope_type_is_named(schema):
    longrope = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                "original_max_position_embeddings": 64}
    raw = {**SMALL, "model_type": "llama"}
    raw.update({"rope_scaling": longrope, "rope_theta": 1e4} if schema == "v4"
               else {"rope_parameters": {**longrope, "rope_theta": 1e4}})
    with pytest.raises(ConfigError, match="'longrope'"):
        ModelConfig.from_hf_dict(raw)


@pytest.mark.parametrize("field", ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                                   "vocab_size"])
def test_missing_required_field_is_named(field):
    raw = {k: v for k, v in {**SMALL, "model_type": "llama"}.items() if k != field}
    with pytest.raises(ConfigError, match=f"'{field}'.*missing"):
        ModelConfig.from_hf_dict(raw)


@pytest.mark.parametrize("kv_heads", [3, 8, 0])
def test_kv_heads_must_divide_heads(kv_heads):
    with pytest.raises(ConfigError, match=f"num_key_value_heads={kv_heads}"):
        ModelConfig.from_hf_dict({**SMALL, "model_type": "llama", "num_key_value_heads": kv_heads})


def test_llama3_rope_missing_field_is_named():
    raw = copy.deepcopy(LLAMA31_8B)
    del raw["rope_scaling"]["low_freq_factor"]
    with pytest.raises(ConfigError, match="'low_freq_factor'"):
        ModelConfig.from_hf_dict(raw)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- files --------------------------------------------------------------------------------------------------------

def test_from_pretrained_folder_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_8B))
    expected = ModelConfig.from_hf_dict(LLAMA31_8B)
    assert ModelConfig.from_pretrained(tmp_path) == expected
    assert ModelConfig.from_pretrained(tmp_path / "config.json") == expected


def test_from_pretrained_of_a_transformers_save(tmp_path):
    transformers.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=4, max_window_layers=1).save_pretrained(
        tmp_path)
    assert windows(ModelConfig.from_pretrained(tmp_path)) == [None, 4, 4]


def test_bad_json_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,')
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        ModelConfig.from_pretrained(tmp_path)
    assert "config.json" in str(info.value)


def test_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_pretrained(tmp_path)


def test_missing_config_json(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_pretrained(tmp_path / "does-not-exist")


@pytest.mark.parametrize("field,value", [
    ("eos_token_id", "</s>"), ("eos_token_id", [2, "</s>"]), ("eos_token_id", True), ("eos_token_id", 2.0),
    ("max_position_embeddings", "4k"), ("max_position_embeddings", 4096.0), ("max_position_embeddings", True),
    ("hidden_size", 64.0), ("vocab_size", True), ("num_hidden_layers", "3"), ("intermediate_size", 128.5),
    ("num_key_value_heads", 2.0), ("num_key_value_heads", True), ("head_dim", "16"), ("head_dim", 16.0),
    ("pad_token_id", "<pad>"), ("bos_token_id", 1.0), ("tie_word_embeddings", "false"), ("mlp_bias", 1),
    ("attention_bias", "true"), ("rms_norm_eps", float("nan")), ("rms_norm_eps", "1e-6"),
    ("rope_theta", float("inf")), ("rope_scaling", "linear"), ("torch_dtype", 16), ("layer_types", "full"),
])
def test_wrong_types_name_the_file_and_field(tmp_path, field, value):
    """Strings, floats and bools where config.json needs ints (or the reverse) are errors, never coerced."""
    raw = {**SMALL, "model_type": "llama", field: value}
    if field == "layer_types":
        raw.update(model_type="mistral", sliding_window=4)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "config.json") in message and field in message, message


@pytest.mark.parametrize("extra", [
    dict(model_type="qwen2", use_sliding_window="yes", sliding_window=4),
    dict(model_type="qwen2", use_sliding_window=True, sliding_window=True),
    dict(model_type="qwen2", use_sliding_window=True, sliding_window=4, max_window_layers="1"),
    dict(model_type="llama", rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor="1",
                                               high_freq_factor=4.0, original_max_position_embeddings=16)),
    dict(model_type="llama", rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64.0)),
    dict(model_type="llama", rope_scaling=dict(rope_type="linear", factor=2.0), partial_rotary_factor="half"),
])
def test_wrong_types_in_nested_and_optional_fields(extra):
    fields = "use_sliding_window|sliding_window|max_window_layers|low_freq_factor|original_max_position_embeddings|" \
             "partial_rotary_factor"
    with pytest.raises(ConfigError, match=f"config.json: (field .)?({fields})"):
        ModelConfig.from_hf_dict({**SMALL, **extra})
