"""MiniCPM-V 4.6 (OmniLMM's current model) end to end: a tiny random checkpoint with its real processor
(tests/vlm_minicpmv.py) loaded by ``jaxgen.load_model``; image + text logits, greedy, the OmniLMM beam preset and
seeded sampling against transformers; prompts with different numbers of (sliced) images in one batch; text-only
prompts; crosscheck; bad input."""

from __future__ import annotations

import copy
import functools
import json
import tempfile

import numpy as np
import pytest
import torch

import jaxgen
from conftest import _ROOT, count_all_compiles
from jaxgen.api.scoring import forward_logits
from jaxgen.text.images import encode_with_images, load_processor
from vlm_minicpmv import image, minicpmv_checkpoint

GREEDY = dict(max_new_tokens=8, do_sample=False, repetition_penalty=1.2, no_repeat_ngram_size=1)


@functools.lru_cache(maxsize=None)
def vlm():
    folder = tempfile.mkdtemp(prefix="minicpmv-", dir=_ROOT)
    ref = minicpmv_checkpoint(folder)
    # jaxgen's own processor loading (it works without torchvision, which transformers' video processor needs)
    return folder, ref, jaxgen.load_model(folder, dtype="float32"), load_processor(folder)


@functools.lru_cache(maxsize=None)
def batch(kind: str) -> dict:
    """Processor outputs: "two": prompt 0 with a sliced 150x330 image, prompt 1 with it and an unsliced 60x120 one
    (rows with different numbers of images, left-padded); "one": a single small image."""
    _, _, _, proc = vlm()
    if kind == "one":
        return encode_with_images(proc, ["What is this?"], [image(60, 120, 3)])
    sliced, small = image(150, 330, 1), image(60, 120, 2)
    proc.tokenizer.padding_side = "left"
    conv = lambda images, text: [{"role": "user", "content": [*({"type": "image", "image": im} for im in images),  # noqa
                                                              {"type": "text", "text": text}]}]
    out = proc.apply_chat_template([conv([sliced], "What is this?"), conv([sliced, small], "Compare them.")],
                                   add_generation_prompt=True, tokenize=True, return_dict=True,
                                   processor_kwargs=dict(return_tensors="np", padding=True))
    return {k: np.asarray(v) for k, v in out.items()}


def torch_inputs(inputs: dict, dtype=torch.float32) -> dict:
    return {k: torch.tensor(v).to(dtype) if v.dtype == np.float32 else torch.tensor(v) for k, v in inputs.items()}


def test_image_logits_match_transformers():
    """Against transformers in float64: jaxgen's float32 error is that of transformers' own float32 (the Gated
    DeltaNet layers' chunked delta rule rounds differently in each; see tests/vlm_minicpmv.py)."""
    _, ref, model, _ = vlm()
    inputs = batch("two")
    assert [int(n) for n in (inputs["input_ids"] == model.config.vision.image_token_id).sum(1)] == [15, 18]
    got = np.asarray(forward_logits(model, **inputs))
    with torch.no_grad():
        want32 = ref(**torch_inputs(inputs)).logits.numpy()
        want64 = copy.deepcopy(ref).double()(**torch_inputs(inputs, torch.float64)).logits.numpy()
    real = inputs["attention_mask"] == 1
    err, hf_err = np.abs(got - want64)[real].max(), np.abs(want32 - want64)[real].max()
    print(f"jaxgen vs float64 {err:.2e}, transformers float32 vs float64 {hf_err:.2e}, "
          f"jaxgen vs transformers {np.abs(got - want32)[real].max():.2e}")
    assert err <= 2 * hf_err + 2e-5, (err, hf_err)
    # The images decide the logits after them.
    flipped = dict(inputs, pixel_values=inputs["pixel_values"][..., ::-1].copy())
    assert np.abs(np.asarray(forward_logits(model, **flipped)) - got)[real].max() > 1e-2


@pytest.mark.parametrize("mode", ["greedy", "omnilmm"])
def test_generate_matches_transformers(mode):
    _, ref, model, _ = vlm()
    inputs = batch("two")
    kw = dict(GREEDY) if mode == "greedy" else dict(jaxgen.PRESETS["omnilmm"], max_new_tokens=8)
    out = jaxgen.generate(model, **inputs, **kw)
    with torch.no_grad():
        want = ref.generate(**torch_inputs(inputs), output_scores=True, return_dict_in_generate=True, **kw)
    t = inputs["input_ids"].shape[1]
    assert len(set(want.sequences[0, t:].tolist())) >= 3, want.sequences
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :want.sequences.shape[1]], want.sequences.numpy())
    if mode == "omnilmm":
        np.testing.assert_allclose(np.asarray(out.sequences_scores), want.sequences_scores.numpy(), atol=1e-4)


def test_seeded_sampling_is_reproducible_and_scored_as_transformers_scores_it():
    import jax

    _, ref, model, _ = vlm()
    inputs = batch("two")
    kw = dict(jaxgen.PRESETS["omnilmm-sampling"], max_new_tokens=6, logprobs_mode="raw")
    out = jaxgen.generate(model, **inputs, key=jax.random.key(11), **kw)
    again = jaxgen.generate(model, **inputs, key=jax.random.key(11), **kw)
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(again.sequences))
    seq, t, n = np.asarray(out.sequences), inputs["input_ids"].shape[1], kw["max_new_tokens"]
    mask = np.concatenate([inputs["attention_mask"], np.ones((seq.shape[0], n), np.int64)], 1)
    full = dict(inputs, input_ids=seq, attention_mask=mask)
    with torch.no_grad():
        logits = ref(**torch_inputs(full)).logits[:, t - 1:t + n - 1].double()
    lp = torch.log_softmax(logits, -1).numpy()
    want = np.take_along_axis(lp, seq[:, t:t + n, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.token_logprobs), want, atol=5e-4)


def test_text_only_prompt_through_the_vision_checkpoint():
    _, ref, model, proc = vlm()
    enc = proc.tokenizer(["plain text, no image", "hi"], return_tensors="np", padding=True)
    ids, mask = np.asarray(enc["input_ids"]), np.asarray(enc["attention_mask"])
    out = jaxgen.generate(model, ids, mask, **GREEDY)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **GREEDY)
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :want.shape[1]], want.numpy())


def test_bad_image_inputs_fail_before_compiling():
    _, _, model, proc = vlm()
    inputs = batch("two")
    text = {k: np.asarray(v) for k, v in proc.tokenizer(["no image"], return_tensors="np").items()}
    cases = {
        "no pixel_values were given": dict(inputs, pixel_values=None, target_sizes=None),
        "need target_sizes": dict(inputs, target_sizes=None),
        "image placeholder tokens .* make 33 image features": dict(text, pixel_values=inputs["pixel_values"],
                                                                   target_sizes=inputs["target_sizes"]),
        "holds 32 image placeholder tokens .* make 33": dict(inputs, input_ids=one_placeholder_less(inputs)),
        "NaViT-packed": dict(inputs, pixel_values=inputs["pixel_values"][..., :-14].copy()),
    }
    with count_all_compiles() as compiles:
        for message, kw in cases.items():
            with pytest.raises(ValueError, match=message):
                jaxgen.generate(model, **kw, max_new_tokens=2)
    assert compiles == []


def one_placeholder_less(inputs: dict) -> np.ndarray:
    ids = inputs["input_ids"].copy()
    row, col = np.argwhere(ids == vlm()[2].config.vision.image_token_id)[0]
    ids[row, col] = 50
    return ids


def test_crosscheck_cli_with_an_image(tmp_path, capsys):
    from jaxgen.cli import app

    folder, _, _, _ = vlm()
    path = tmp_path / "photo.png"
    image(150, 330, 4).save(path)
    code = app.main(["crosscheck", "--model", folder, "--image", str(path), "Describe it.", "--modes",
                     "greedy,beam", "--max-new-tokens", "5", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    report = json.loads(out.out)
    assert [r["verdict"] for r in report["results"]] == ["identical", "identical"]


def test_cli_generate_with_images(tmp_path, capsys):
    from jaxgen.cli import app

    folder, _, model, proc = vlm()
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    image(150, 330, 1).save(paths[0])
    image(60, 120, 2).save(paths[1])
    code = app.main(["generate", "--model", folder, "--image", str(paths[0]), "--image", str(paths[1]),
                     "Compare them.", "--preset", "omnilmm", "--max-new-tokens", "5", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads(out.out.strip().splitlines()[-1])
    from PIL import Image

    want = jaxgen.generate(model, **encode_with_images(proc, ["Compare them."],
                                                       [Image.open(p).convert("RGB") for p in paths]),
                           **jaxgen.PRESETS["omnilmm"], max_new_tokens=5)
    assert [t["id"] for t in record["tokens"]] == np.asarray(want.new_tokens)[0, :int(want.num_generated[0])].tolist()


def test_export_writes_transformers_keys(tmp_path):
    from safetensors.numpy import load_file

    from checkpoints_convert.convert import load_hf_params
    from checkpoints_convert.export import save_hf_safetensors

    folder, ref, _, _ = vlm()
    config, arrays = load_hf_params(folder)
    save_hf_safetensors(str(tmp_path / "model.safetensors"), config, arrays)
    written = load_file(str(tmp_path / "model.safetensors"))
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert set(written) == set(want)
    for k in want:
        np.testing.assert_array_equal(written[k], want[k], err_msg=k)


def test_readme_images_example_runs(tmp_path):
    """README's image example, run as written on the test checkpoint (folder and image path substituted)."""
    import os

    folder, _, model, proc = vlm()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        section = f.read().split("\n## Images in, text out", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    photo = tmp_path / "photo.png"
    image(150, 330, 9).save(photo)
    assert '"path/to/MiniCPM-V-4.6"' in code and '"photo.png"' in code
    code = code.replace('"path/to/MiniCPM-V-4.6"', repr(folder)).replace('"photo.png"', repr(str(photo)))
    code = code.replace("max_new_tokens=64", "max_new_tokens=4").replace("\"photo.png\"", repr(str(photo)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert np.asarray(scope["out"].new_tokens).shape == (1, 4) and len(scope["text"]) == 1
    # generate_text with the same images and the checkpoint's own settings = generate on the processor's inputs
    plain = jaxgen.generate(model, **scope["inputs"], max_new_tokens=4)
    n = int(np.asarray(plain.num_generated)[0])
    assert [t.id for t in scope["texts"][0].tokens] == np.asarray(plain.new_tokens)[0, :n].tolist()
