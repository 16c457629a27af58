"""Silent wrong answers that must be loud: NaN/inf logits, work that cannot fit, lengths past the context."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxgen
from conftest import hf_checkpoint, models
from jaxgen.crosscheck.compare import compare
from jaxgen.crosscheck.report import NON_FINITE


@pytest.fixture(scope="module")
def nan_folder(tmp_path_factory) -> str:
    """llama_gqa with one NaN in a layer-1 MLP weight: every logit downstream of it is NaN."""
    folder, _ = hf_checkpoint("llama_gqa")
    out = str(tmp_path_factory.mktemp("nan") / "model")
    shutil.copytree(folder, out)
    file = os.path.join(out, "model.safetensors")
    tensors = load_file(file)
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][3, 5] = np.nan
    save_file(tensors, file, metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("mode", [dict(do_sample=False), dict(do_sample=True), dict(num_beams=2)])
def test_nan_weights_raise_naming_step_and_row(nan_folder, mode):
    model = jaxgen.load_model(nan_folder)
    ids = np.asarray([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = (ids > 0).astype(np.int32)
    import jax

    with pytest.raises(jaxgen.NonFiniteLogitsError, match="step 0 of row 0") as info:
        jaxgen.generate(model, ids, mask, key=jax.random.split(jax.random.key(0), 2), max_new_tokens=4,
                        pad_token_id=0, **mode)
    assert info.value.step == 0 and info.value.row == 0


def test_nan_weights_in_score_and_crosscheck(nan_folder):
    model = jaxgen.load_model(nan_folder)
    with pytest.raises(jaxgen.NonFiniteLogitsError, match="position"):
        jaxgen.score(model, np.asarray([[1, 5, 6, 7]]))
    report = compare(nan_folder, [[1, 5, 6, 7]], modes=("greedy",), max_new_tokens=3)
    assert [r.verdict for r in report.results] == [NON_FINITE] and report.has_mismatch
    def no_constants(name):
        raise AssertionError(f"JSON holds the non-standard constant {name}")

    data = json.loads(report.to_json(), parse_constant=no_constants)  # valid JSON: non-finite numbers are null
    assert data["results"][0]["prefill_max_abs_diff"] is None


def test_a_cache_that_cannot_fit_is_refused_before_compiling():
    model = models("llama_gqa")[0]
    before = jaxgen.compile_count()
    with pytest.raises(ValueError, match=r"max_new_tokens=1000000000 .* at most max_new_tokens=\d+ fit"):
        jaxgen.generate(model, np.asarray([[1, 2, 3]]), max_new_tokens=10**9, do_sample=False)
    assert jaxgen.compile_count() == before


def test_past_the_context_warns_for_rope():
    model = models("llama_gqa")[0]
    context = model.config.max_position_embeddings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jaxgen.generate(model, np.asarray([[1, 2, 3]]), max_new_tokens=context, do_sample=False, pad_token_id=0)
    assert any("max_position_embeddings" in str(w.message) for w in caught)
