"""checkpoints_convert: HF checkpoint -> jaxgen params, against tiny random transformers models built here.

Expected values come from the torch model's own ``state_dict`` and an independent few-line mapping, not from
the converter's table, so a wrong transpose or name in the table shows up as a mismatch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

import checkpoints_convert  # noqa: E402
from checkpoints_convert import cli, convert, tables  # noqa: E402
from checkpoints_convert import convert_checkpoint, is_converted, load_hf_params, read_converted  # noqa: E402
from jaxgen.config import SUPPORTED_MODEL_TYPES, ModelConfig  # noqa: E402
from jaxgen.errors import CheckpointError, ConfigError  # noqa: E402
from jaxgen.model import model_from_arrays, param_shapes  # noqa: E402

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, initializer_range=0.2)
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**BASE),
    "llama_bias": lambda: transformers.LlamaConfig(**BASE, attention_bias=True, mlp_bias=True),
    "llama_tied": lambda: transformers.LlamaConfig(**BASE, tie_word_embeddings=True),
    "mistral": lambda: transformers.MistralConfig(**BASE, sliding_window=16),
    "qwen2": lambda: transformers.Qwen2Config(**BASE),
    "qwen3": lambda: transformers.Qwen3Config(**BASE, head_dim=32),  # head_dim != hidden / heads
}


def build_model(kind: str, torch_dtype=torch.float32):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(FAMILIES[kind]())
    with torch.no_grad():
        # Random norms and biases too (HF initialises them to ones/zeros, which would hide a mix-up).
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.to(torch_dtype).eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """``hf(kind, dtype=float32, shard=None) -> (folder, state_dict)``: a saved tiny model, built once per module.

    Treat the folder as read-only; copy it (``copy_hf``) before changing anything.
    """
    cache = {}

    def get(kind: str, torch_dtype=torch.float32, shard: str | None = None):
        key = (kind, torch_dtype, shard)
        if key not in cache:
            model = build_model(kind, torch_dtype)
            folder = tmp_path_factory.mktemp(f"{kind}-{str(torch_dtype).split('.')[-1]}-{shard or 'single'}")
            kwargs = {"max_shard_size": shard} if shard else {}
            model.save_pretrained(folder, **kwargs)
            cache[key] = (str(folder), {k: v.detach().clone() for k, v in model.state_dict().items()})
        return cache[key]

    return get


def copy_hf(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def expected_params(state: dict, tied: bool) -> dict[str, np.ndarray]:
    """The jaxgen arrays a correct conversion yields (float32: exact for f32/bf16/f16 sources)."""
    out = {}
    for key, t in state.items():
        a = t.float().numpy()
        if key == "lm_head.weight" and tied:
            continue
        if key == "model.embed_tokens.weight":
            out["model.embed_tokens.embedding"] = a
        elif key.endswith("_proj.weight") or key == "lm_head.weight":
            out[key[: -len("weight")] + "kernel"] = a.T  # torch [out, in] -> flax [in, out]
        else:
            out[key] = a
    return out


def assert_params_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_array_equal(np.asarray(got[name]).astype(np.float32), value, err_msg=name)


def assert_nothing_written(out) -> None:
    out = str(out)
    assert not os.path.lexists(out)
    parent = os.path.dirname(out)
    if os.path.isdir(parent):
        assert [n for n in os.listdir(parent) if ".partial-" in n] == []


def raw_header(file: str) -> tuple[dict, bytes]:
    with open(file, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8: 8 + n]), data[8 + n:]


def write_raw(file: str, header: bytes | dict, data: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(file, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)


def save_state(folder: str, state: dict) -> None:
    safetensors_torch.save_file({k: v.contiguous().clone() for k, v in state.items()},
                                os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------- conversion


def test_every_supported_family_has_a_table():
    assert set(tables.TABLES) == set(SUPPORTED_MODEL_TYPES)
    assert checkpoints_convert.__all__ == ["load_hf_params", "convert_checkpoint", "read_converted", "is_converted"]


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_table_reaches_every_parameter(kind):
    # Every jaxgen parameter of the family has exactly one HF key that the table maps onto it.
    config = ModelConfig.from_hf_dict(FAMILIES[kind]().to_dict())
    for name in param_shapes(config):
        key, transform = tables.hf_key(config.model_type, name)
        assert tables.map_key(config.model_type, key) == (name, tables.INVERSE[transform])


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_load_matches_hf_state_dict(hf, kind):
    folder, state = hf(kind)
    config, params = load_hf_params(folder)
    assert config.model_type == kind.split("_")[0]
    assert_params_equal(params, expected_params(state, config.tie_word_embeddings))
    assert all(a.dtype == np.float32 for a in params.values())
    model = model_from_arrays(config, params)
    assert model.num_params() == config.num_params()


def test_sharded_safetensors(hf):
    folder, state = hf("llama", shard="20KB")
    assert os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
    assert_params_equal(load_hf_params(folder)[1], expected_params(state, tied=False))


def test_sharded_index_missing_shard(hf, tmp_path):
    folder = copy_hf(hf("llama", shard="20KB")[0], tmp_path / "hf")
    shard = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(folder, shard))
    with pytest.raises(CheckpointError, match=shard):
        load_hf_params(folder)


@pytest.mark.parametrize("torch_dtype", [torch.float32, torch.bfloat16])
def test_pytorch_bin_single_and_sharded(hf, tmp_path, torch_dtype):
    src, state = hf("qwen2", torch_dtype)
    want = expected_params(state, tied=False)
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(os.path.join(src, "config.json"), single)
    torch.save(state, single / "pytorch_model.bin")  # transformers 5 writes only safetensors
    config, params = load_hf_params(single)
    assert_params_equal(params, want)
    assert {a.dtype for a in params.values()} == {np.dtype(np.float32) if torch_dtype == torch.float32
                                                   else np.dtype(ml_dtypes.bfloat16)}

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(os.path.join(src, "config.json"), sharded)
    keys = sorted(state)
    parts = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
             "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for file, names in parts.items():
        torch.save({k: state[k] for k in names}, sharded / file)
    index = {"metadata": {}, "weight_map": {k: f for f, names in parts.items() for k in names}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert_params_equal(load_hf_params(sharded)[1], want)


def test_corrupt_pytorch_bin(hf, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copy(os.path.join(hf("llama")[0], "config.json"), folder)
    (folder / "pytorch_model.bin").write_bytes(b"not a torch file" * 10)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_hf_params(folder)


def test_bfloat16_checkpoint_and_casts(hf):
    folder, state = hf("qwen3", torch.bfloat16)
    _, kept = load_hf_params(folder)  # dtype=None keeps bf16 bit patterns
    assert {a.dtype for a in kept.values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert_params_equal(kept, expected_params(state, tied=False))
    _, f32 = load_hf_params(folder, dtype="float32")
    assert {a.dtype for a in f32.values()} == {np.dtype(np.float32)}
    assert_params_equal(f32, expected_params(state, tied=False))

    # float32 -> bf16/f16 casts round exactly as torch's .to() does (round to nearest even).
    folder32, state32 = hf("qwen3")
    for name, torch_dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        _, cast = load_hf_params(folder32, dtype=name)
        assert {a.dtype.name for a in cast.values()} == {name}
        assert_params_equal(cast, expected_params({k: v.to(torch_dtype) for k, v in state32.items()}, tied=False))
    with pytest.raises(ValueError, match="dtype"):
        load_hf_params(folder32, dtype="int8")


def test_tied_checkpoint_with_lm_head_copy(hf, tmp_path):
    src, state = hf("llama_tied")
    folder = copy_hf(src, tmp_path / "hf")
    # Older checkpoints store the tied head too (and the rotary buffer); both must be accepted and dropped.
    extra = dict(state, **{"lm_head.weight": state["model.embed_tokens.weight"].clone(),
                           "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)})
    save_state(folder, extra)
    config, params = load_hf_params(folder)
    assert "lm_head.kernel" not in params
    assert_params_equal(params, expected_params(state, tied=True))

    extra["lm_head.weight"] = extra["lm_head.weight"] + 1.0
    save_state(folder, extra)
    with pytest.raises(CheckpointError, match="lm_head.weight.*tie_word_embeddings"):
        load_hf_params(folder)


def test_convert_round_trip(hf, tmp_path):
    src, state = hf("llama")
    folder = copy_hf(src, tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / "hf" / name).write_text(f"{name} contents")
    out = tmp_path / "out"
    assert convert_checkpoint(folder, out, progress=False, max_shard_bytes=40_000) == str(out)

    assert is_converted(out) and not is_converted(folder)
    marker = json.loads((out / "jaxgen_checkpoint.json").read_text())
    assert marker["format"] == "jaxgen-safetensors" and marker["version"] == 1 and marker["dtype"] == "float32"
    assert marker["source"] == os.path.abspath(folder)
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(shards) > 1 and shards[0] == f"params-00001-of-{len(shards):05d}.safetensors"
    assert set(marker["weight_map"].values()) == set(shards)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja"):
        assert (out / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name

    config, params = read_converted(out)
    hf_config, hf_params = load_hf_params(folder)
    assert config == hf_config
    assert_params_equal(params, expected_params(state, tied=False))
    assert_params_equal(params, hf_params)
    # The params files are plain safetensors: the reference library reads them too.
    from_lib = {}
    for shard in shards:
        from_lib.update(safetensors_torch.load_file(out / shard))
    assert_params_equal({k: v.numpy() for k, v in from_lib.items()}, hf_params)
    model_from_arrays(config, params)


def test_convert_bfloat16_round_trip(hf, tmp_path):
    folder, state = hf("mistral")
    out = tmp_path / "out"
    convert_checkpoint(folder, out, dtype="bfloat16", progress=False)
    assert json.loads((out / "jaxgen_checkpoint.json").read_text())["dtype"] == "bfloat16"
    _, params = read_converted(out)
    assert {a.dtype for a in params.values()} == {np.dtype(ml_dtypes.bfloat16)}
    _, direct = load_hf_params(folder, dtype="bfloat16")
    for name in direct:
        np.testing.assert_array_equal(params[name].view(np.uint16), direct[name].view(np.uint16), err_msg=name)


def test_read_converted_rejects_bad_marker(hf, tmp_path):
    out = tmp_path / "out"
    convert_checkpoint(hf("llama")[0], out, progress=False)
    marker = json.loads((out / "jaxgen_checkpoint.json").read_text())
    (out / "jaxgen_checkpoint.json").write_text(json.dumps(dict(marker, version=2)))
    with pytest.raises(CheckpointError, match="version 2"):
        read_converted(out)
    (out / "jaxgen_checkpoint.json").write_text(json.dumps(dict(marker, weight_map={"x": "../evil.safetensors"})))
    with pytest.raises(CheckpointError, match="weight_map"):
        read_converted(out)
    with pytest.raises(CheckpointError, match="jaxgen_checkpoint.json"):
        read_converted(hf("llama")[0])
    with pytest.raises(CheckpointError, match="read_converted"):
        load_hf_params(out)


# --------------------------------------------------------------------------------------------- bad inputs


def _truncate(folder):
    file = os.path.join(folder, "model.safetensors")
    os.truncate(file, os.path.getsize(file) - 100)
    return "model.safetensors.*truncated"


def _garbage_header(folder):
    file = os.path.join(folder, "model.safetensors")
    _, data = raw_header(file)
    write_raw(file, b"{this is not json", data)
    return "model.safetensors.*not valid JSON"


def _offsets_past_end(folder):
    file = os.path.join(folder, "model.safetensors")
    header, data = raw_header(file)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    header[last]["data_offsets"] = [o + 4096 for o in header[last]["data_offsets"]]
    write_raw(file, header, data)
    return f"model.safetensors: tensor '{last}'.*file has only"


def _lying_dtype(folder):
    # Data written as F16, header relabelled F32: the byte span is half what F32 needs.
    state = {k: v.to(torch.float16) for k, v in build_model("llama").state_dict().items()}
    save_state(folder, state)
    file = os.path.join(folder, "model.safetensors")
    header, data = raw_header(file)
    header["model.norm.weight"]["dtype"] = "F32"
    write_raw(file, header, data)
    return "model.safetensors: tensor 'model.norm.weight'.*F32"


def _missing_tensor(folder):
    state = build_model("llama").state_dict()
    del state["model.layers.1.mlp.up_proj.weight"]
    save_state(folder, state)
    return "missing.*model.layers.1.mlp.up_proj.weight"


def _unknown_tensor(folder):
    state = dict(build_model("llama").state_dict(), **{"model.layers.0.mlp.extra_proj.weight": torch.zeros(3, 3)})
    save_state(folder, state)
    return "model.layers.0.mlp.extra_proj.weight"


def _unexpected_bias(folder):
    state = dict(build_model("llama").state_dict(), **{"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)})
    save_state(folder, state)
    return "model.layers.0.self_attn.q_proj.bias"


def _wrong_shape(folder):
    state = build_model("llama").state_dict()
    state["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 100)
    save_state(folder, state)
    return r"model.layers.0.mlp.down_proj.weight.*\(64, 100\).*\(64, 128\).*intermediate_size=128"


def _edit_config(**changes):
    def edit(folder):
        file = os.path.join(folder, "config.json")
        with open(file) as f:
            raw = json.load(f)
        raw.update(changes)
        with open(file, "w") as f:
            json.dump(raw, f)
    return edit


def _config_intermediate(folder):
    _edit_config(intermediate_size=256)(folder)
    return r"tensor 'model.layers.0.mlp.\w+_proj.weight' .*has shape .*config.json implies .*intermediate_size=256"


def _config_layers(folder):
    _edit_config(num_hidden_layers=3)(folder)
    return "missing.*model.layers.2.*num_hidden_layers=3"


def _config_not_tied(folder):
    state = build_model("llama").state_dict()
    del state["lm_head.weight"]
    save_state(folder, state)
    return "missing.*lm_head.weight.*tie_word_embeddings"


def _unknown_model_type(folder):
    _edit_config(model_type="mamba")(folder)
    return "config.json.*model_type 'mamba'"


def _float8_weights(folder):
    state = build_model("llama").state_dict()
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.float8_e4m3fn)
    save_state(folder, state)
    return "model.norm.weight.*float8_e4m3fn.*not supported"


BAD_INPUTS = {
    "truncated": (_truncate, CheckpointError),
    "garbage_header": (_garbage_header, CheckpointError),
    "offsets_past_end": (_offsets_past_end, CheckpointError),
    "lying_dtype": (_lying_dtype, CheckpointError),
    "missing_tensor": (_missing_tensor, CheckpointError),
    "unknown_tensor": (_unknown_tensor, CheckpointError),
    "unexpected_bias": (_unexpected_bias, CheckpointError),
    "wrong_shape": (_wrong_shape, CheckpointError),
    "config_intermediate_size": (_config_intermediate, CheckpointError),
    "config_num_layers": (_config_layers, CheckpointError),
    "config_untied_without_head": (_config_not_tied, CheckpointError),
    "unknown_model_type": (_unknown_model_type, ConfigError),
    "float8_weights": (_float8_weights, CheckpointError),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_writes_nothing(hf, tmp_path, case):
    damage, error = BAD_INPUTS[case]
    folder = copy_hf(hf("llama")[0], tmp_path / "hf")
    pattern = damage(folder)
    out = tmp_path / "out"
    with pytest.raises(error, match=pattern):
        convert_checkpoint(folder, out, progress=False)
    assert_nothing_written(out)
    with pytest.raises(error, match=pattern):
        load_hf_params(folder)


def test_existing_out_dir_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # The source does not even exist: the out_dir check must come first.
    with pytest.raises(CheckpointError, match="out: already exists; remove it"):
        convert_checkpoint(tmp_path / "no-such-model", out, progress=False)
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_midway_leaves_nothing(hf, tmp_path, monkeypatch, exc):
    folder = hf("llama")[0]
    real = convert._write_shard
    calls = []

    def flaky(path, items, produce):
        calls.append(path)
        if len(calls) > 1:
            raise exc("disk full")
        real(path, items, produce)

    monkeypatch.setattr(convert, "_write_shard", flaky)
    out = tmp_path / "new" / "nested" / "out"  # parents created for the output are removed again
    with pytest.raises(exc):
        convert_checkpoint(folder, out, progress=False, max_shard_bytes=40_000)
    assert len(calls) == 2
    assert_nothing_written(out)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_in_process(hf, tmp_path, capsys):
    folder = hf("llama_tied")[0]
    out = tmp_path / "out"
    assert cli.main([folder, str(out)]) == 0
    err = capsys.readouterr().err
    assert "converting: " in err and "tensors" in err and is_converted(out)

    assert cli.main([folder, str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "Traceback" not in err

    broken = copy_hf(folder, tmp_path / "broken")
    _truncate(broken)
    assert cli.main([broken, str(tmp_path / "out2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.safetensors" in err and "Traceback" not in err
    assert_nothing_written(tmp_path / "out2")


def test_cli_subprocess(hf, tmp_path):
    folder, state = hf("qwen2")
    out = tmp_path / "out"
    # Make the packages importable the way this test process imports them, installed or not.
    roots = {os.path.dirname(os.path.dirname(m.__file__)) for m in (checkpoints_convert, sys.modules["jaxgen"])}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "checkpoints_convert", folder, str(out), "--dtype", "bfloat16"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tensors" in proc.stderr
    _, params = read_converted(out)
    assert_params_equal(params, expected_params({k: v.to(torch.bfloat16) for k, v in state.items()}, tied=False))
