"""Gemma 3 with images: a tiny random ``Gemma3ForConditionalGeneration`` and its real processor (tests/vlm_gemma3.py),
images made here. Image + text logits, greedy, the OmniLMM beam preset and teacher-forced sampling against
transformers; batches with different numbers of images; text-only prompts; bad input caught before compiling."""

from __future__ import annotations

import functools
import tempfile

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import jaxgen
from conftest import _ROOT, count_all_compiles
from jaxgen.api.images import check_images
from jaxgen.decode.loop import prompt_positions
from jaxgen.nn.vision import ImageInputs
from vlm_gemma3 import gemma3_checkpoint

# no_repeat_ngram_size keeps greedy from repeating one token (random tied-embedding Gemma models do).
GREEDY = dict(max_new_tokens=8, do_sample=False, repetition_penalty=1.2, no_repeat_ngram_size=1)


@functools.lru_cache(maxsize=None)
def vlm():
    folder = tempfile.mkdtemp(prefix="gemma3-vlm-", dir=_ROOT)
    ref = gemma3_checkpoint(folder)
    return folder, ref, jaxgen.load_model(folder, dtype="float32"), transformers.AutoProcessor.from_pretrained(folder)


def image(seed: int, size: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8))


def batch(counts=(1, 2), texts=None):
    """Processor outputs (numpy) for prompts with ``counts[i]`` images each, left-padded."""
    _, _, _, proc = vlm()
    texts = texts or [" ".join(["<start_of_image>"] * n) + f" describe {i} please" for i, n in enumerate(counts)]
    images = [[image(10 * i + j) for j in range(n)] for i, n in enumerate(counts)]
    out = proc(text=texts, images=images if any(counts) else None, return_tensors="np", padding=True)
    return {k: np.asarray(v) for k, v in out.items()}


def hf_inputs(inputs: dict) -> dict:
    return {k: torch.tensor(v) for k, v in inputs.items()}


def jax_logits(model, inputs: dict) -> np.ndarray:
    ids, mask = inputs["input_ids"].astype(np.int32), inputs["attention_mask"].astype(np.int32)
    hi = check_images(model.config, ids, mask, inputs["pixel_values"], inputs.get("token_type_ids"))
    images = ImageInputs(pixel_values=hi.pixel_values, slots=hi.slots, blocks=hi.blocks)
    logits, _ = model.step(model.params, ids, prompt_positions(mask), None, mask, None, images)
    return np.asarray(logits)


@pytest.mark.parametrize("counts", [(1,), (1, 2)])
def test_image_logits_match_transformers(counts):
    _, ref, model, _ = vlm()
    inputs = batch(counts)
    with torch.no_grad():
        want = ref(**hf_inputs(inputs)).logits.numpy()
    got = jax_logits(model, inputs)
    real = inputs["attention_mask"] == 1
    assert np.abs(got - want)[real].max() <= 1e-4, np.abs(got - want)[real].max()
    # The images matter, and so does the bidirectional mask over their tokens.
    other = dict(inputs, pixel_values=inputs["pixel_values"][..., ::-1].copy())  # mirrored images
    assert np.abs(jax_logits(model, other) - got)[real].max() > 1e-2
    causal = dict(inputs, token_type_ids=np.zeros_like(inputs["token_type_ids"]))
    assert np.abs(jax_logits(model, causal) - got)[real].max() > 1e-2


def test_token_type_ids_default_to_the_placeholders():
    _, _, model, _ = vlm()
    inputs = batch((2,))
    out = jaxgen.generate(model, **inputs, **GREEDY)
    rest = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    np.testing.assert_array_equal(np.asarray(jaxgen.generate(model, **rest, **GREEDY).sequences),
                                  np.asarray(out.sequences))


@pytest.mark.parametrize("mode", ["greedy", "omnilmm"])
def test_generate_matches_transformers(mode):
    _, ref, model, _ = vlm()
    inputs = batch((1, 2))
    kw = dict(GREEDY) if mode == "greedy" else dict(jaxgen.PRESETS["omnilmm"], max_new_tokens=8,
                                                    no_repeat_ngram_size=1)
    out = jaxgen.generate(model, **inputs, **kw)
    with torch.no_grad():
        want = ref.generate(**hf_inputs(inputs), output_scores=True, return_dict_in_generate=True, **kw)
    t = inputs["input_ids"].shape[1]
    assert len(set(want.sequences[0, t:].tolist())) >= 3, want.sequences
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :want.sequences.shape[1]], want.sequences.numpy())
    if mode == "omnilmm":
        np.testing.assert_allclose(np.asarray(out.sequences_scores), want.sequences_scores.numpy(), atol=1e-4)


def test_sampling_matches_transformers_teacher_forced():
    """Seeded sampling: each chosen token's log-prob equals transformers' (processed) log-prob of that token when
    the sampled sequence is fed back through its model with the same images."""
    _, ref, model, _ = vlm()
    inputs = batch((1, 2))
    kw = dict(do_sample=True, temperature=0.8, top_k=20, max_new_tokens=6)
    out = jaxgen.generate(model, **inputs, key=jaxgen_key(3), **kw)
    again = jaxgen.generate(model, **inputs, key=jaxgen_key(3), **kw)
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(again.sequences))
    seq = np.asarray(out.sequences)
    t, n = inputs["input_ids"].shape[1], kw["max_new_tokens"]
    full_mask = np.concatenate([inputs["attention_mask"], np.ones((seq.shape[0], n), np.int64)], 1)
    full_tt = np.concatenate([inputs["token_type_ids"], np.zeros((seq.shape[0], n), np.int64)], 1)
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor(seq, dtype=torch.long), attention_mask=torch.tensor(full_mask),
                     token_type_ids=torch.tensor(full_tt), pixel_values=torch.tensor(inputs["pixel_values"])).logits
    lp = torch.log_softmax(logits[:, t - 1:t + n - 1].double(), -1).numpy()  # raw log-probs (logprobs_mode)
    want = np.take_along_axis(lp, seq[:, t:t + n, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.token_logprobs), want, atol=1e-4)


def jaxgen_key(seed: int):
    import jax

    return jax.random.key(seed)


def test_text_only_prompt_through_the_vision_checkpoint():
    _, ref, model, _ = vlm()
    inputs = batch((0, 0), texts=["hello there", "a longer text prompt"])
    assert "pixel_values" not in inputs
    out = jaxgen.generate(model, inputs["input_ids"], inputs["attention_mask"], **GREEDY)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(inputs["input_ids"]),
                            attention_mask=torch.tensor(inputs["attention_mask"]), **GREEDY)
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :want.shape[1]], want.numpy())


def test_bad_image_inputs_fail_before_compiling():
    _, _, model, _ = vlm()
    inputs = batch((1, 2))
    text = batch((0,), texts=["no image here"])
    cases = {
        "placeholder tokens .* but no pixel_values": dict(inputs, pixel_values=None),
        "image placeholder tokens .* make 12 image features": dict(text, pixel_values=inputs["pixel_values"]),
        "make 8 image features": dict(inputs, pixel_values=inputs["pixel_values"][:2]),
        "pixel_values has shape": dict(inputs, pixel_values=inputs["pixel_values"][:, :, :20]),
        "NaN": dict(inputs, pixel_values=np.full_like(inputs["pixel_values"], np.nan)),
    }
    with count_all_compiles() as compiles:
        for message, kw in cases.items():
            with pytest.raises(ValueError, match=message):
                jaxgen.generate(model, **kw, max_new_tokens=2)
    assert compiles == []


def test_a_text_model_refuses_pixel_values():
    from conftest import models

    model, _ = models("llama_gqa")
    with pytest.raises(ValueError, match="reads no images"):
        jaxgen.generate(model, np.array([[5, 6]]), pixel_values=np.zeros((1, 3, 28, 28), np.float32),
                        max_new_tokens=2)


def test_conversion_round_trip_keeps_the_vision_side(tmp_path):
    """Converted folder loads the same; export writes transformers 5's keys and transformers reloads them."""
    folder, ref, model, _ = vlm()
    from checkpoints_convert import convert_checkpoint

    converted = convert_checkpoint(folder, str(tmp_path / "converted"), progress=False)
    again = jaxgen.load_model(converted, dtype="float32")
    inputs = batch((1,))
    np.testing.assert_array_equal(jax_logits(again, inputs), jax_logits(model, inputs))
    from checkpoints_convert.export import save_hf_safetensors
    from checkpoints_convert.convert import load_hf_params

    config, arrays = load_hf_params(folder)
    out = tmp_path / "exported"
    out.mkdir()
    save_hf_safetensors(str(out / "model.safetensors"), config, arrays)
    from safetensors.numpy import load_file

    written = load_file(str(out / "model.safetensors"))
    with torch.no_grad():
        want = {k: v.numpy() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    assert set(written) == set(want)
    for k in want:
        np.testing.assert_array_equal(written[k], want[k], err_msg=k)


# --- the CLI ---------------------------------------------------------------------------------------------------------

def _cli(capsys, *argv) -> tuple[int, str, str]:
    from jaxgen.cli import app

    code = app.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_image_matches_the_python_api(tmp_path, capsys):
    import json

    folder, _, model, proc = vlm()
    path = tmp_path / "photo.png"
    image(5).save(path)
    code, out, err = _cli(capsys, "generate", "--model", folder, "--image", str(path), "--image", str(path),
                          "What is in this picture?", "--preset", "omnilmm", "--max-new-tokens", "5", "--json",
                          "--top-logprobs", "2")
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                 {"type": "text", "text": "What is in this picture?"}]}]
    text = proc.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = proc(text=[text], images=[[Image.open(path).convert("RGB")] * 2], return_tensors="np",
                  add_special_tokens=False)
    want = jaxgen.generate(model, **{k: np.asarray(v) for k, v in inputs.items()}, **jaxgen.PRESETS["omnilmm"],
                           max_new_tokens=5, top_logprobs=2)
    assert [t["id"] for t in record["tokens"]] == np.asarray(want.new_tokens)[0, :int(want.num_generated[0])].tolist()
    assert record["config"]["num_beams"] == 3 and record["config"]["repetition_penalty"] == 1.2
    assert len(record["tokens"][0]["alternatives"]) == 2


def test_cli_image_errors(tmp_path, capsys):
    folder, _, _, _ = vlm()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, _, err = _cli(capsys, "generate", "--model", folder, "--image", str(bad), "hi")
    assert code != 0 and "not a readable image" in err
    code, _, err = _cli(capsys, "generate", "--model", folder, "--image", str(tmp_path / "missing.png"), "hi")
    assert code != 0 and "no such image file" in err
    good = tmp_path / "ok.png"
    image(1).save(good)
    code, _, err = _cli(capsys, "generate", "--image", str(good), "hi")  # the bundled text model has no processor
    assert code != 0 and "no processor" in err


def test_crosscheck_with_an_image_is_identical(tmp_path, capsys):
    import json

    folder, _, _, _ = vlm()
    path = tmp_path / "photo.png"
    image(7).save(path)
    code, out, err = _cli(capsys, "crosscheck", "--model", folder, "--image", str(path), "What is this?",
                          "--max-new-tokens", "5", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert [r["verdict"] for r in report["results"]] == ["identical"] * 3
    assert report["settings"]["images"] == 1
    assert all(r["prefill_max_abs_diff"] < 1e-4 for r in report["results"])


def test_pan_and_scan_crops_match_transformers():
    """The processor's pan-and-scan: a wide image becomes the image plus its crops, each with its own placeholders
    (``pixel_values`` [1 + crops, ...]); beam search over them equals transformers'."""
    _, ref, model, proc = vlm()
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 900, 3), dtype=np.uint8))
    inputs = proc(text=["<start_of_image> what is it"], images=[[wide]], return_tensors="np", do_pan_and_scan=True,
                  pan_and_scan_min_crop_size=28)
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    assert inputs["pixel_values"].shape[0] > 1
    kw = dict(jaxgen.PRESETS["omnilmm"], max_new_tokens=6, no_repeat_ngram_size=1)
    out = jaxgen.generate(model, **inputs, **kw)
    with torch.no_grad():
        want = ref.generate(**hf_inputs(inputs), output_scores=True, return_dict_in_generate=True, **kw)
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :want.sequences.shape[1]], want.sequences.numpy())
    np.testing.assert_allclose(np.asarray(out.sequences_scores), want.sequences_scores.numpy(), atol=1e-4)


def test_cli_image_streams_text(tmp_path, capsys):
    """Without --json the continuation streams to stdout (the prompt with its image is not echoed)."""
    folder, _, model, _ = vlm()
    path = tmp_path / "photo.png"
    image(3).save(path)
    code, out, err = _cli(capsys, "generate", "--model", folder, "--image", str(path), "What is this?",
                          "--max-new-tokens", "6", "--stream-every", "2", "--no-repeat-ngram-size", "1")
    assert code == 0, err
    assert "[6 tokens, finish_reason: length]" in err or "finish_reason: eos" in err
    code, record, _ = _cli(capsys, "generate", "--model", folder, "--image", str(path), "What is this?",
                           "--max-new-tokens", "6", "--no-repeat-ngram-size", "1", "--json")
    import json

    assert out.rstrip("\n") == json.loads(record.strip().splitlines()[-1])["text"]
