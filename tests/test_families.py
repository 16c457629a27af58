"""The families beyond the Llama line (GPT-2, Gemma 1/2/3, Phi-3) against transformers.

Float32 logit parity (batch of one, left-padded batch) and prefill + decode = one full pass run for these
variants in tests/test_model_parity.py (they are in conftest.VARIANTS); this file adds what is family-specific:
greedy tokens equal to transformers' ``generate``, conversion of fused tensors (split, and merged back on export),
config parsing of both schemas, learned-position limits, sharding rules, and full-size configs traced abstractly
with transformers' own parameter counts.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import jaxgen  # noqa: E402
from checkpoints_convert import export, load_hf_params, shapes, tables  # noqa: E402
from conftest import BASE, VARIANTS, hf_checkpoint, left_pad  # noqa: E402
from jaxgen.config import ModelConfig  # noqa: E402
from jaxgen.model import abstract_model, param_shapes  # noqa: E402
from jaxgen.parallel.sharding import PARAM_AXES  # noqa: E402

FAMILY_VARIANTS = ["gpt2", "gemma", "gemma2", "gemma3", "phi3", "phi3_partial_longrope"]
PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3], [7, 8, 9], [40, 41, 42, 43, 44, 45]]
MAX_NEW = 12
# Random tiny models with tied embeddings tend to repeat one token forever (Gemma's sqrt(hidden) scale makes a
# token's own row dominate); a repetition penalty keeps greedy decoding moving through decisive logits
# (transformers applies the same processor). Gemma 3's q/k norms make it the most self-similar.
PENALTY = {"gemma2": 2.0, "gemma3": 3.0}


@functools.lru_cache(maxsize=None)
def randomized(variant: str) -> tuple[str, object]:
    """``hf_checkpoint(variant)`` with random norm weights and biases (transformers initialises them to 1/0, or 0
    for Gemma's ``1 + w`` norms, which would hide a swapped or dropped one); (folder, float32 torch model)."""
    model = copy.deepcopy(hf_checkpoint(variant)[1])
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    folder = tempfile.mkdtemp(prefix=f"family-{variant}-", dir=os.path.dirname(hf_checkpoint(variant)[0]))
    model.save_pretrained(folder)
    return folder, model


@functools.lru_cache(maxsize=None)
def jax_model(variant: str) -> jaxgen.Model:
    return jaxgen.load_model(randomized(variant)[0], dtype="float32")


def hf_config(variant: str, **extra):
    cls, _, overrides = VARIANTS[variant]
    return getattr(transformers, cls)(**{**BASE, **overrides, **extra})


# --- greedy generation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_greedy_tokens_equal_transformers_generate(variant):
    ids, mask = left_pad(PROMPTS, pad=0)
    kw = dict(max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_id=None, repetition_penalty=PENALTY.get(variant, 1.3))
    out = jaxgen.generate(jax_model(variant), ids, mask, **kw)
    with torch.no_grad():
        ref = randomized(variant)[1].generate(torch.tensor(ids, dtype=torch.long),
                                              attention_mask=torch.tensor(mask, dtype=torch.long),
                                              do_sample=False, **kw).numpy()
    new = ref[:, ids.shape[1]:]
    assert min(len(set(row)) for row in new.tolist()) >= 3, f"degenerate reference: {new}"
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :ref.shape[1]], ref)


# --- conversion of fused tensors ------------------------------------------------------------------------------

def test_gpt2_c_attn_is_split_into_q_k_v():
    folder, hf = randomized("gpt2")
    config, params = load_hf_params(folder)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    h = config.hidden_size
    w, b = state["transformer.h.1.attn.c_attn.weight"], state["transformer.h.1.attn.c_attn.bias"]
    assert w.shape == (h, 3 * h)  # Conv1D: [in, out] already, q | k | v along out
    for k, p in enumerate("qkv"):
        np.testing.assert_array_equal(params[f"model.layers.1.self_attn.{p}_proj.kernel"], w[:, k * h:(k + 1) * h])
        np.testing.assert_array_equal(params[f"model.layers.1.self_attn.{p}_proj.bias"], b[k * h:(k + 1) * h])
    np.testing.assert_array_equal(params["model.layers.0.mlp.up_proj.kernel"], state["transformer.h.0.mlp.c_fc.weight"])
    np.testing.assert_array_equal(params["model.embed_positions.embedding"], state["transformer.wpe.weight"])


def test_gpt2_checkpoint_without_transformer_prefix(tmp_path):
    """The Hub's original GPT-2 files are GPT2Model state dicts: no ``transformer.`` prefix, and mask buffers."""
    folder, _ = randomized("gpt2")
    state = safetensors_numpy.load_file(os.path.join(folder, "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in state.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))  # the causal-mask buffer old files carry
    safetensors_numpy.save_file(bare, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
    _, want = load_hf_params(folder)
    _, got = load_hf_params(tmp_path)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_split_with_wrong_fused_size_is_a_shape_error(tmp_path):
    folder, _ = randomized("gpt2")
    state = safetensors_numpy.load_file(os.path.join(folder, "model.safetensors"))
    state["transformer.h.0.attn.c_attn.weight"] = state["transformer.h.0.attn.c_attn.weight"][:, :-4].copy()
    safetensors_numpy.save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
    with pytest.raises(jaxgen.errors.CheckpointError, match=r"c_attn\.weight.*\(64, 188\).*\(64, 192\)"):
        load_hf_params(tmp_path)


def test_phi3_qkv_and_gate_up_are_split():
    folder, hf = randomized("phi3")
    config, params = load_hf_params(folder)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    q, kv, i = config.q_size, config.kv_size, config.intermediate_size
    qkv, gate_up = state["model.layers.0.self_attn.qkv_proj.weight"], state["model.layers.0.mlp.gate_up_proj.weight"]
    assert qkv.shape == (q + 2 * kv, config.hidden_size) and kv < q  # GQA: unequal parts
    for name, rows in (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, q + 2 * kv))):
        np.testing.assert_array_equal(params[f"model.layers.0.self_attn.{name}_proj.kernel"], qkv[rows].T)
    np.testing.assert_array_equal(params["model.layers.0.mlp.gate_proj.kernel"], gate_up[:i].T)  # chunk(2): gate first
    np.testing.assert_array_equal(params["model.layers.0.mlp.up_proj.kernel"], gate_up[i:].T)


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_export_merges_back_to_the_hf_state_dict(tmp_path, variant):
    folder, hf = randomized(variant)
    config, params = load_hf_params(folder)
    export.save_hf_safetensors(tmp_path / "model.safetensors", config, params)
    got = safetensors_numpy.load_file(tmp_path / "model.safetensors")
    want = {k: v.numpy() for k, v in hf.state_dict().items()
            if not (config.tie_word_embeddings and k == tables.TIED_HEAD_KEY)}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# --- LongRoPE past the original context ----------------------------------------------------------------------

LONG = 40  # past phi3_partial_longrope's original_max_position_embeddings (32): the long factors apply


def test_longrope_long_factors_match_transformers():
    model, hf = jax_model("phi3_partial_longrope"), randomized("phi3_partial_longrope")[1]
    assert model.config.rope.original_max_position_embeddings == 32 < LONG
    ids = np.random.default_rng(3).integers(3, 128, (1, LONG)).astype(np.int32)
    step = jax.jit(model.step)
    ours, _ = step(model.params, jnp.asarray(ids), jnp.arange(LONG, dtype=jnp.int32)[None],
                   model.init_cache(1, LONG), jnp.ones_like(jnp.asarray(ids)))
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
        short = hf(torch.tensor(ids[:, :20], dtype=torch.long)).logits.numpy()
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5 * scale, rtol=0)
    assert np.abs(theirs[:, :20] - short).max() > 1e-2  # the long factors changed even the first positions
    # Cached decoding that stays past the original context (prompt already longer) equals one full pass.
    prefill = 36
    logits, cache = step(model.params, jnp.asarray(ids[:, :prefill]), jnp.arange(prefill, dtype=jnp.int32)[None],
                         model.init_cache(1, LONG), jnp.ones((1, prefill), jnp.int32))
    chunks = [np.asarray(logits)]
    for t in range(prefill, LONG):
        logits, cache = step(model.params, jnp.asarray(ids[:, t:t + 1]), jnp.full((1, 1), t, jnp.int32), cache,
                             jnp.ones((1, 1), jnp.int32))
        chunks.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(chunks, 1), np.asarray(ours), atol=1e-5 * scale, rtol=0)


# --- config, positions, sharding ------------------------------------------------------------------------------

def test_learned_positions_refuse_generating_past_the_context():
    model = jax_model("gpt2")
    assert model.config.position_embedding == "learned"
    ids = np.full((1, 250), 5, np.int32)
    with pytest.raises(ValueError, match="learned positions"):
        jaxgen.generate(model, ids, max_new_tokens=10, pad_token_id=0)


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_every_parameter_has_a_sharding_rule(variant):
    import re

    config = ModelConfig.from_hf_dict(hf_config(variant).to_dict())
    for name, shape in shapes.param_shapes(config).items():
        axes = [a for p, a in PARAM_AXES if re.fullmatch(p, name)]
        assert axes and len(axes[0]) == len(shape), name


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_shape_table_and_num_params_equal_transformers(variant):
    config = ModelConfig.from_hf_dict(hf_config(variant).to_dict())
    assert shapes.param_shapes(config) == param_shapes(config)
    hf = randomized(variant)[1]
    assert config.num_params() == sum(p.numel() for p in hf.parameters())


# 4.x config.json files as on the Hub (trimmed of fields jaxgen ignores).
GEMMA_2B = dict(model_type="gemma", attention_bias=False, bos_token_id=2, eos_token_id=1, head_dim=256,
                hidden_act="gelu", hidden_activation=None, hidden_size=2048, intermediate_size=16384,
                max_position_embeddings=8192, num_attention_heads=8, num_hidden_layers=18, num_key_value_heads=1,
                pad_token_id=0, rms_norm_eps=1e-6, rope_scaling=None, rope_theta=10000.0, torch_dtype="bfloat16",
                vocab_size=256000)
GEMMA2_2B = dict(model_type="gemma2", attention_bias=False, attn_logit_softcapping=50.0, bos_token_id=2,
                 eos_token_id=1, final_logit_softcapping=30.0, head_dim=256, hidden_act="gelu_pytorch_tanh",
                 hidden_activation="gelu_pytorch_tanh", hidden_size=2304, intermediate_size=9216,
                 max_position_embeddings=8192, num_attention_heads=8, num_hidden_layers=26, num_key_value_heads=4,
                 pad_token_id=0, query_pre_attn_scalar=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                 sliding_window=4096, torch_dtype="float32", vocab_size=256000)
GEMMA3_1B = dict(model_type="gemma3_text", attention_bias=False, attn_logit_softcapping=None, bos_token_id=2,
                 eos_token_id=1, final_logit_softcapping=None, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                 hidden_size=1152, intermediate_size=6912, max_position_embeddings=32768, num_attention_heads=4,
                 num_hidden_layers=26, num_key_value_heads=1, pad_token_id=0, query_pre_attn_scalar=256,
                 rms_norm_eps=1e-6, rope_local_base_freq=10000, rope_scaling=None, rope_theta=1000000,
                 sliding_window=512, sliding_window_pattern=6, torch_dtype="bfloat16", vocab_size=262144)
# Gemma 3 4B's text part: linear RoPE scaling on global layers only.
GEMMA3_4B_TEXT = {**GEMMA3_1B, "hidden_size": 2560, "intermediate_size": 10240, "num_attention_heads": 8,
                  "num_hidden_layers": 34, "num_key_value_heads": 4, "sliding_window": 1024,
                  "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "max_position_embeddings": 131072}
PHI3_MINI_4K = dict(model_type="phi3", bos_token_id=1, eos_token_id=32000, hidden_act="silu", hidden_size=3072,
                    intermediate_size=8192, max_position_embeddings=4096, num_attention_heads=32,
                    num_hidden_layers=32, num_key_value_heads=32, original_max_position_embeddings=4096,
                    pad_token_id=32000, rms_norm_eps=1e-5, rope_scaling=None, rope_theta=10000.0,
                    sliding_window=2047, tie_word_embeddings=False, torch_dtype="bfloat16", vocab_size=32064)
# LongRoPE configs; the factor values are made up (the Hub's lists have these lengths: rotary_dim / 2).
PHI3_MINI_128K = {**PHI3_MINI_4K, "max_position_embeddings": 131072, "sliding_window": 262144, "rope_scaling": {
    "type": "longrope", "short_factor": [1.0 + k / 48 for k in range(48)], "long_factor": [1.0 + k for k in range(48)]}}
PHI4_MINI = {**PHI3_MINI_4K, "hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 8,
             "vocab_size": 200064, "max_position_embeddings": 131072, "partial_rotary_factor": 0.75,
             "sliding_window": 262144, "tie_word_embeddings": True, "eos_token_id": 199999, "pad_token_id": 199999,
             "bos_token_id": 199999, "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48,
                                                      "long_factor": [1.0 + k / 4 for k in range(48)]}}
HUB_CONFIGS = {"gemma-2b": GEMMA_2B, "gemma-2-2b": GEMMA2_2B, "gemma-3-1b": GEMMA3_1B,
               "gemma-3-4b-text": GEMMA3_4B_TEXT, "phi-3-mini-4k": PHI3_MINI_4K, "phi-3-mini-128k": PHI3_MINI_128K,
               "phi-4-mini": PHI4_MINI}


def v5_dict(v4: dict) -> dict:
    """What transformers 5 writes for the same model (``rope_parameters``, ``layer_types``, ``dtype``)."""
    return transformers.AutoConfig.for_model(**copy.deepcopy(v4)).to_dict()


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_v4_and_v5_schema_give_the_same_config(name):
    v4 = HUB_CONFIGS[name]
    v5 = v5_dict(v4)
    assert "rope_parameters" in v5 and "rope_theta" not in v5
    assert ModelConfig.from_hf_dict(v4) == ModelConfig.from_hf_dict(v5)


def test_gemma_specs_from_hub_configs():
    g1, g2, g3 = (ModelConfig.from_hf_dict(HUB_CONFIGS[n]) for n in ("gemma-2b", "gemma-2-2b", "gemma-3-1b"))
    for c in (g1, g2, g3):
        assert c.embedding_multiplier == c.hidden_size ** 0.5 and c.tie_word_embeddings
        assert {s.norm.kind for s in c.layers} == {"gemma_rms"} and {s.activation for s in c.layers} == {"gelu_tanh"}
    assert {s.residual for s in g1.layers} == {"pre"} and g1.final_logit_softcap is None
    assert [g2.layer_window(i) for i in range(4)] == [4096, None, 4096, None]
    a = g2.layers[0].attention
    assert (a.scale, a.softcap, g2.final_logit_softcap) == (256 ** -0.5, 50.0, 30.0)
    assert [i for i in range(26) if g3.layer_window(i) is None] == [5, 11, 17, 23]
    local, glob = g3.layers[0].attention, g3.layers[5].attention
    assert (local.rope.theta, glob.rope.theta, local.qk_norm, local.softcap) == (1e4, 1e6, True, None)
    g3_4b = ModelConfig.from_hf_dict(GEMMA3_4B_TEXT)
    assert (g3_4b.layers[5].attention.rope.rope_type, g3_4b.layers[5].attention.rope.factor) == ("linear", 8.0)
    assert g3_4b.layers[0].attention.rope.rope_type == "default"


def test_phi3_specs_from_hub_configs():
    mini, long, phi4 = (ModelConfig.from_hf_dict(HUB_CONFIGS[n]) for n in ("phi-3-mini-4k", "phi-3-mini-128k",
                                                                          "phi-4-mini"))
    assert mini.layer_window(0) == 2047 and mini.rope.rope_type == "default"
    assert (long.rope.rope_type, long.rope.original_max_position_embeddings, len(long.rope.long_factor)) == (
        "longrope", 4096, 48)
    assert (phi4.head_dim, phi4.rope.rotary_dim(phi4.head_dim), phi4.num_key_value_heads) == (128, 96, 8)
    with pytest.raises(jaxgen.errors.ConfigError, match="short_factor.*48"):
        ModelConfig.from_hf_dict({**PHI4_MINI, "rope_scaling": {**PHI4_MINI["rope_scaling"], "short_factor": [1.0]}})
    with pytest.raises(jaxgen.errors.ConfigError, match="'linear'"):
        ModelConfig.from_hf_dict({**PHI3_MINI_4K, "rope_scaling": {"type": "linear", "factor": 2.0}})


# --- full-size configs, abstractly ----------------------------------------------------------------------------

FULL_SIZE = {
    **HUB_CONFIGS,
    "gpt2": dict(model_type="gpt2", activation_function="gelu_new", n_ctx=1024, n_embd=768, n_head=12, n_layer=12,
                 n_positions=1024, layer_norm_epsilon=1e-5, vocab_size=50257, bos_token_id=50256,
                 eos_token_id=50256, scale_attn_weights=True),
}


def hf_meta_params(raw: dict) -> int:
    """transformers' own parameter count (tied weights once) of a config, built on the meta device."""
    config = transformers.AutoConfig.for_model(**copy.deepcopy(raw))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_full_size_config_traces_with_transformers_parameter_count(name):
    raw = FULL_SIZE[name]
    config = ModelConfig.from_hf_dict(raw)
    leaves = jax.tree_util.tree_leaves(abstract_model(config, jnp.bfloat16))
    assert sum(int(np.prod(x.shape)) for x in leaves) == config.num_params() == hf_meta_params(raw)
    assert json.dumps(config.to_dict())  # plain data all the way down


# --- tensor parallelism: the split parameters shard like Llama's -----------------------------------------------

TP_WORKER = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
import jaxgen
from jaxgen.parallel.sharding import make_mesh
out = {}
for variant, folder in json.loads(sys.argv[1]).items():
    single, sharded = jaxgen.load_model(folder), jaxgen.load_model(folder, mesh=make_mesh(data=1, model=4))
    q = sharded.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    ids = np.random.default_rng(0).integers(3, 128, (2, 12)).astype(np.int32)
    run = lambda m: np.asarray(jax.jit(m.step)(m.params, jnp.asarray(ids), jnp.tile(jnp.arange(12), (2, 1)),
                                               m.init_cache(2, 12), jnp.ones_like(jnp.asarray(ids)))[0])
    out[variant] = dict(diff=float(np.abs(run(single) - run(sharded)).max()), q_spec=str(q.sharding.spec))
print("REPORT " + json.dumps(out))
"""


def test_fused_checkpoints_run_tensor_parallel():
    """On a 4-way model axis (8 fake CPU devices, in a subprocess), GPT-2's and Phi-3's split q/k/v and gate/up
    shard by heads and MLP width, and the logits equal one device's."""
    import subprocess
    import sys

    folders = {v: randomized(v)[0] for v in ("gpt2", "gemma2", "phi3")}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", TP_WORKER, json.dumps(folders)], capture_output=True, text=True,
                          env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    for variant, r in json.loads(lines[-1][len("REPORT "):]).items():
        assert r["q_spec"] in ("P(None, 'model')", "PartitionSpec(None, 'model')"), (variant, r)
        assert r["diff"] <= 3e-5, (variant, r)  # partial sums added in another order: float32 rounding only


def test_crossing_the_longrope_boundary_warns():
    """transformers re-encodes the whole sequence with the long factors once it passes the original context;
    jaxgen keeps its cache, so a generation that crosses it is announced."""
    import warnings

    import jaxgen
    from conftest import hf_checkpoint

    model = jaxgen.load_model(hf_checkpoint("phi3_partial_longrope")[0])
    edge = model.config.layers[0].attention.rope.original_max_position_embeddings
    prompt = np.arange(1, 5)[None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jaxgen.generate(model, prompt, max_new_tokens=edge - 4, do_sample=False)  # stays below: no warning
        assert not [w for w in caught if "LongRoPE" in str(w.message)]
        jaxgen.generate(model, prompt, max_new_tokens=edge, do_sample=False)
    assert any("original_max_position_embeddings" in str(w.message) for w in caught)
