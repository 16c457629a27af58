"""``jaxgen.crosscheck``: identical on every family; MISMATCH (exit 1) when one side's weights were perturbed."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile

import pytest
import torch

import jaxgen
from conftest import FAMILIES, hf_checkpoint
from jaxgen.cli import app as cli
from jaxgen.crosscheck.compare import CrosscheckError, compare

PROMPTS = [[1, 5, 6, 7], [1, 20, 21, 22, 23, 24]]
N = 10  # prompt + generated tokens stay within one length bucket (16): one forward program per family
SAMPLE = dict(temperature=0.8, top_k=30, top_p=0.9, min_p=0.05)
_ROOT = tempfile.mkdtemp(prefix="jaxgen-crosscheck-")


@functools.lru_cache(maxsize=None)
def _jax_model(folder: str):
    return jaxgen.load_model(folder)


@functools.lru_cache(maxsize=None)
def _variant_of(variant: str, name: str, edit) -> str:
    """A copy of the variant's HF folder with ``edit(state_dict)`` applied to its weights."""
    folder, hf = hf_checkpoint(variant)
    model = type(hf)(hf.config).eval()
    model.load_state_dict(hf.state_dict())
    with torch.no_grad():
        edit(model.state_dict())
    out = tempfile.mkdtemp(prefix=f"{variant}-{name}-", dir=_ROOT)
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_identical_on_every_family(family):
    folder, hf = hf_checkpoint(family)
    # Every mode on one family; greedy (with teacher-forced logprobs of both sides) on the others, to keep
    # compilations down. Sampling on the model side is the same program for every family.
    modes = ("greedy", "beam", "sample") if family == "llama_gqa" else ("greedy",)
    report = compare(folder, PROMPTS, modes=modes, max_new_tokens=N, seeds=(0, 1), sample_config=SAMPLE,
                     hf_model=hf, jax_model=_jax_model(folder))
    assert not report.has_mismatch, report.table()
    assert {r.verdict for r in report.results} == {"identical"}, report.table()
    assert len(report.results) == len(PROMPTS) * (len(modes) + ("sample" in modes))  # two sampling seeds
    for r in report.results:
        assert r.prefill_max_abs_diff < 1e-4 and r.logprob_max_abs_diff < 1e-4
        assert r.jax_tokens == r.hf_tokens and r.first_divergence is None
        if r.mode == "sample":
            assert len(r.details["jax_sequence_scored_by_hf"]) == len(r.jax_tokens[0])
            assert r.details["min_boundary_distance"] > 0
    if family == "llama_gqa":
        beams = [r for r in report.results if r.mode == "beam"]
        assert all(len(r.jax_tokens) == 3 and r.details["max_score_diff"] < 1e-4 for r in beams)
        data = json.loads(report.to_json())
        assert data["has_mismatch"] is False and data["summary"]["identical"] == len(report.results)
        table = report.table()
        assert "identical" in table and "tolerances:" in table and "MISMATCH" in table  # the summary line


def _perturb_one_weight(state) -> None:
    state["model.layers.0.mlp.down_proj.weight"][3, 7] += 0.5


def test_mismatch_when_one_weight_is_perturbed_on_one_side(capsys):
    """Build it so that it can fail: the same command passes on the unperturbed pair."""
    folder, _ = hf_checkpoint("llama_gqa")
    perturbed = _variant_of("llama_gqa", "perturbed", _perturb_one_weight)
    args = ["crosscheck", "--model", perturbed, "--jax-model", folder, "--ids", "1,5,6,7", "--modes", "greedy",
            "--max-new-tokens", str(N)]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "prefill logits differ" in out
    assert cli.main(args[:2] + [folder] + args[3:] + ["--json"]) == 0  # control: passes without the edit
    report = json.loads(capsys.readouterr().out)
    assert report["has_mismatch"] is False and report["summary"]["identical"] == 1


def test_near_tie_is_told_apart_from_a_mismatch():
    """Give two tokens (nearly) the same LM-head row so they tie for first place: a tiny difference between the
    sides is a near-tie, a large one a mismatch."""
    folder, hf = hf_checkpoint("llama_gqa")
    with torch.no_grad():
        h = hf.model(torch.tensor([PROMPTS[0]])).last_hidden_state[0, -1]
    direction = h / h.norm() ** 2  # row @ h == 30: far above every other logit

    def rows(delta):
        def edit(state):
            state["lm_head.weight"][40] = 30 * direction
            state["lm_head.weight"][41] = (30 + delta) * direction
        return edit

    jax_side = _variant_of("llama_gqa", "tie-jax", rows(+5e-5))  # token 41 wins by 5e-5
    for hf_delta, verdict in ((-5e-5, "near-tie"), (-0.5, "MISMATCH")):  # token 40 wins by 5e-5 / 0.5
        hf_side = _variant_of("llama_gqa", f"tie-hf{hf_delta}", rows(hf_delta))
        report = compare(hf_side, PROMPTS[:1], modes=("greedy",), max_new_tokens=N, jax_model_dir=jax_side,
                         jax_model=_jax_model(jax_side))
        [r] = report.results
        assert r.first_divergence == 0 and r.verdict == verdict, report.table()
        d = r.details["divergence"]
        assert d["jax_top2"] == [41, 40] and d["hf_top2"] == [40, 41]
        assert d["jax_margin"] < 1e-3
    assert report.has_mismatch and not compare(jax_side, PROMPTS[:1], modes=("greedy",), max_new_tokens=N,
                                                jax_model=_jax_model(jax_side)).has_mismatch


def test_bad_requests_are_clear_errors(tmp_path, capsys):
    folder, hf = hf_checkpoint("llama_gqa")
    with pytest.raises(CrosscheckError, match="unknown mode"):
        compare(folder, PROMPTS, modes=("greedy", "topk"), hf_model=hf)
    with pytest.raises(CrosscheckError, match="no tokenizer"):
        compare(folder, ["some text"], modes=("greedy",), hf_model=hf, jax_model=_jax_model(folder))
    bad_json = tmp_path / "prompts.json"
    bad_json.write_text('["first prompt", "second"')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "lots"}')
    cases = [
        (["crosscheck", "--model", folder, "--prompts", str(bad_json)], "does not parse"),
        (["crosscheck", "--model", folder, "--ids", "1,5,x"], "not a list of token ids"),
        (["crosscheck", "--model", folder], "no tokenizer"),
        (["crosscheck", "--model", folder, "--ids", "1,5", "--modes", "greedy,nucleus"], "unknown mode"),
        (["crosscheck", "--model", folder, "--ids", "1,5", "--dtype", "float64"], "invalid choice"),
        (["crosscheck", "--model", str(tmp_path / "missing"), "--ids", "1,5"], "does not exist"),
        (["crosscheck", "--model", str(broken), "--jax-model", folder, "--ids", "1,5"], "transformers cannot load"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error:" in err and message in err and "Traceback" not in err, (argv, err)


def test_import_jaxgen_does_not_import_torch():
    import subprocess

    code = "import sys, jaxgen, jaxgen.crosscheck, jaxgen.cli.app, jaxgen.api.scoring, jaxgen.text.tokenizer; " \
           "print('torch' in sys.modules, 'transformers' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.stdout.split() == ["False", "False"], res.stderr
