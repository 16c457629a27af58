"""The language model inside multimodal checkpoints (Gemma 3, Gemma 4, Qwen3.5 ``ForConditionalGeneration``
folders, saved by transformers with their vision towers): jaxgen loads the text part, says it left the towers out,
and on text prompts matches transformers' multimodal model (logits, greedy and beam search, crosscheck)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxgen
from conftest import BASE, GEMMA4, QWEN35, assert_generate_matches_transformers, left_pad, randomize_vectors_and_save

PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3, 99, 12], [7, 8, 9, 40, 41]]
_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
               patch_size=14)
# Image / special tokens above the prompts' ids, so the text prompts hold none.
WRAPPED = {
    "gemma3": lambda: transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config=dict(BASE, head_dim=16, sliding_window=4, model_type="gemma3_text"),
        vision_config=dict(_SIGLIP, model_type="siglip_vision_model"), mm_tokens_per_image=4,
        boi_token_index=125, eoi_token_index=126, image_token_index=127)),
    "gemma4": lambda: transformers.Gemma4ForConditionalGeneration(transformers.Gemma4Config(
        text_config=dict(BASE, **GEMMA4), audio_config=None,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=16),
        boi_token_id=120, eoi_token_id=121, image_token_id=122, video_token_id=123, boa_token_id=124,
        eoa_token_index=125, audio_token_id=126)),
    "qwen3_5": lambda: transformers.Qwen3_5ForConditionalGeneration(transformers.Qwen3_5Config(
        text_config=dict(BASE, **QWEN35),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, temporal_patch_size=2, spatial_merge_size=2),
        image_token_id=127, video_token_id=126, vision_start_token_id=125, vision_end_token_id=124)),
}


@functools.lru_cache(maxsize=None)
def wrapped(name: str) -> tuple[str, object, jaxgen.Model, list[str]]:
    """(folder, transformers model, jaxgen model, conversion warnings) for ``WRAPPED[name]``."""
    torch.manual_seed(0)
    ref = WRAPPED[name]().eval()
    folder = randomize_vectors_and_save(ref, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = jaxgen.load_model(folder, dtype="float32")
    return folder, ref, model, [str(w.message) for w in caught]


@pytest.fixture(params=list(WRAPPED))
def name(request) -> str:
    return request.param


def test_loads_the_language_model_and_says_what_it_left_out(name):
    folder, ref, model, messages = wrapped(name)
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["model_type"] == name
    assert model.config.wrapper == name and model.config.model_type == f"{name}_text"
    assert model.config.tie_word_embeddings == ref.config.tie_word_embeddings
    text = ref.model.language_model
    lm_head = 0 if model.config.tie_word_embeddings else ref.lm_head.weight.numel()
    buffers = sum(b.numel() for n, b in text.named_buffers() if n.endswith("layer_scalar"))
    loaded = sum(p.numel() for p in text.parameters()) + lm_head + buffers
    if name == "gemma3":  # its vision side loads too (tests/test_vision_gemma3.py), and nothing is left out
        assert model.config.vision is not None and not messages, messages
        loaded += sum(p.numel() for n, p in ref.model.named_parameters()  # SigLIP's unused pooling head aside
                      if not n.startswith("language_model.") and ".head." not in n)
    else:
        assert any(f"a {name} checkpoint" in m and "images are not read" in m for m in messages), messages
    assert model.num_params() == loaded


def test_logits_match_transformers(name):
    from jaxgen.decode.loop import prompt_positions

    _, ref, model, _ = wrapped(name)
    ids, mask = left_pad(PROMPTS)
    pos = np.asarray(prompt_positions(jnp.asarray(mask)))
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    with torch.no_grad():
        want = ref(t(ids), attention_mask=t(mask), position_ids=t(pos)).logits.numpy()
    got, _ = model.step(model.params, jnp.asarray(ids), jnp.asarray(pos), model.init_cache(2, ids.shape[1]),
                        jnp.asarray(mask))
    err = np.abs(np.asarray(got) - want)[mask.astype(bool)].max()
    print(f"{name} logits max abs err {err:.2e}")
    assert err <= 1e-4, err


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_matches_transformers(name, num_beams):
    _, ref, model, _ = wrapped(name)
    ids, mask = left_pad(PROMPTS)
    assert_generate_matches_transformers(model, ref, ids, mask, num_beams)


def test_crosscheck_is_identical():
    from jaxgen.crosscheck.compare import compare

    folder, ref, model, _ = wrapped("gemma3")
    report = compare(folder, [PROMPTS[0]], modes=("greedy",), max_new_tokens=6, hf_model=ref, jax_model=model)
    assert not report.has_mismatch and {r.verdict for r in report.results} == {"identical"}, report.table()


def test_bad_multimodal_checkpoints_are_clear_errors(tmp_path):
    from jaxgen.config import ModelConfig
    from jaxgen.errors import CheckpointError, ConfigError

    with pytest.raises(ConfigError, match="text_config"):
        ModelConfig.from_hf_dict({"model_type": "gemma3"})
    with pytest.raises(ConfigError, match="text_config.model_type"):
        ModelConfig.from_hf_dict({"model_type": "gemma3", "text_config": {**BASE, "model_type": "llama"}})
    # A tensor that is neither the language model nor a known tower is still an error that names it.
    folder, _, _, _ = wrapped("gemma3")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(bad / "model.safetensors"))
    save_file({**tensors, "model.surprise.weight": np.zeros(3, np.float32)}, str(bad / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.surprise.weight"):
        jaxgen.load_model(str(bad), dtype="float32")


def test_export_writes_where_transformers_keeps_the_language_model(tmp_path):
    """Exported weights of a wrapper's language model land under ``model.language_model.*``: transformers' multimodal
    model loads them into its text part, and the tower is all that it reports missing."""
    from checkpoints_convert import export

    folder, ref, model, _ = wrapped("qwen3_5")
    params = {".".join(map(str, path)): np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
              for path, v in model.params.flat_state()}
    out = tmp_path / "exported"
    out.mkdir()
    shutil.copy(os.path.join(folder, "config.json"), out / "config.json")
    export.save_hf_safetensors(out / "model.safetensors", model.config, params)
    back, info = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert info["missing_keys"] and all("visual" in k for k in info["missing_keys"]), info
    assert not info["unexpected_keys"], info
    for key, want in ref.model.language_model.state_dict().items():
        np.testing.assert_array_equal(back.model.language_model.state_dict()[key].numpy(), want.numpy(), err_msg=key)
