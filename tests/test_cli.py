"""The ``jaxgen`` command: end to end in subprocesses (few: each pays for imports and a compilation), the rest
in-process through ``jaxgen.cli.app.main``."""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxgen
from conftest import hf_checkpoint
from jaxgen.cli import app as cli
from jaxgen.api.generation_config import GenerationConfig
from jaxgen.api.scoring import score
from jaxgen.text.generate_text import generate_text
from jaxgen.text.tokenizer import load_tokenizer
from test_tokenizer import GENERATION_DEFAULTS, no_tokenizer_dir, text_model, text_model_dir

# Without PYTHONUNBUFFERED: the command itself must flush what it streams.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "JAX_PLATFORMS": "cpu"}
K = 3


def _jaxgen_command() -> list[str]:
    script = shutil.which("jaxgen") or os.path.join(os.path.dirname(sys.executable), "jaxgen")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "jaxgen"]


def _check_against_score(records: list[dict], prompts: list[str]) -> None:
    tokenizer = load_tokenizer(text_model_dir())
    for record, prompt in zip(records, prompts):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = prompt_ids + [t["id"] for t in record["tokens"]]
        s = score(text_model(), np.asarray([ids]), top_logprobs=K)
        expected = np.asarray(s.token_logprobs)[0, len(prompt_ids):]
        np.testing.assert_allclose([t["logprob"] for t in record["tokens"]], expected, atol=1e-4)
        top_lp = np.asarray(s.top_logprobs)[0, len(prompt_ids):]
        np.testing.assert_allclose([[a["logprob"] for a in t["alternatives"]] for t in record["tokens"]], top_lp,
                                   atol=1e-4)
        assert [[a["id"] for a in t["alternatives"]] for t in record["tokens"]] == \
            np.asarray(s.top_token_ids)[0, len(prompt_ids):].tolist()
        assert all(t["text"] == tokenizer.decode([t["id"]]) for t in record["tokens"])


def test_generate_streams_before_the_process_ends():
    cmd = [sys.executable, "-m", "jaxgen", "generate", "--model", text_model_dir(), "Once upon a time",
           "--max-new-tokens", "3000", "--min_new_tokens", "3000", "--seed", "3", "--stream-every", "8"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    chunks: list[tuple[float, bytes]] = []
    err = b""
    finished_at = None  # when stderr announced the end of generation
    alive_at_first_chunk = None
    open_streams = 2
    while open_streams:
        for key, _ in sel.select(timeout=300):
            data = os.read(key.fileobj.fileno(), 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
            elif key.data == "out":
                if not chunks:
                    alive_at_first_chunk = proc.poll() is None
                chunks.append((time.monotonic() - start, data))
            else:
                err += data
                if b"finish_reason" in err and finished_at is None:
                    finished_at = time.monotonic() - start
    assert proc.wait(timeout=60) == 0, err.decode()
    stderr = err.decode()
    assert "seed: 3" in stderr and "3000 tokens, finish_reason: length" in stderr
    assert alive_at_first_chunk, "the first text arrived only after the process had ended"
    assert len(chunks) >= 3, f"stdout came in {len(chunks)} piece(s), not streamed"
    assert chunks[0][0] < finished_at and chunks[-2][0] > chunks[0][0]
    text = b"".join(c for _, c in chunks).decode()
    assert len(text.strip()) > 100


def test_generate_json_records_and_score_agree():
    """--json through the installed console script, with the checkpoint's generation_config.json defaults."""
    prompts = ["hello world", "The capital of France is"]
    res = subprocess.run(_jaxgen_command() + ["generate", "--model", text_model_dir(), *prompts, "--json",
                                              "--top-logprobs", str(K), "--seed", "5"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "seed: 5" in res.stderr and "Traceback" not in res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(records) == 2
    for record, prompt in zip(records, prompts):
        assert set(record) == {"seed", "config", "prompt", "text", "finish_reason", "tokens"}
        assert record["seed"] == 5 and record["prompt"] == prompt
        for name, value in GENERATION_DEFAULTS.items():  # the model's generation_config.json was respected
            assert record["config"][name] == value
        assert record["config"]["top_logprobs"] == K
        assert record["finish_reason"] in ("eos", "length")
        assert len(record["tokens"]) == 6 or record["finish_reason"] == "eos"
        assert all(len(t["alternatives"]) == K for t in record["tokens"])
    _check_against_score(records, prompts)
    # The same seed repeats the run (in-process this time).
    tokenizer = load_tokenizer(text_model_dir())
    again = generate_text(text_model(), tokenizer, [prompts[1]], top_logprobs=K,
                          key=jax.random.fold_in(jax.random.key(5), 1)[None])  # prompt 1 of seed 5
    assert again[0].token_ids == [t["id"] for t in records[1]["tokens"]]
    assert again[0].text == records[1]["text"]


def test_score_command(capsys, monkeypatch):
    text = "The capital of France is Paris."
    assert cli.main(["score", "--model", text_model_dir(), text, "--top-logprobs", str(K), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    ids = load_tokenizer(text_model_dir())(text)["input_ids"]
    s = score(text_model(), np.asarray([ids]), top_logprobs=K)
    assert [t["id"] for t in record["tokens"]] == ids
    assert record["tokens"][0]["logprob"] is None and record["tokens"][0]["alternatives"] == []
    np.testing.assert_allclose([t["logprob"] for t in record["tokens"][1:]], np.asarray(s.token_logprobs)[0, 1:],
                               atol=1e-6)
    assert record["total_logprob"] == pytest.approx(float(s.total_logprob()[0]), abs=1e-4)
    # Human-readable table; no --model means the bundled model (pointed at the test model here).
    monkeypatch.setattr(jaxgen.loading, "BUNDLED_MODEL", text_model_dir())
    assert cli.main(["score", text, "--top-logprobs", str(K)]) == 0
    out = capsys.readouterr().out
    assert "total logprob" in out and "perplexity" in out and out.count("\n") >= len(ids) + 2
    # Token ids work without a tokenizer.
    ids_arg = ",".join(map(str, ids))
    assert cli.main(["score", "--model", no_tokenizer_dir(), "--ids", ids_arg, "--top-logprobs", str(K),
                     "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([t["logprob"] for t in record["tokens"][1:]], np.asarray(s.token_logprobs)[0, 1:],
                               atol=1e-6)
    assert record["tokens"][1]["text"] is None


def test_every_generation_config_field_is_a_flag_in_both_spellings():
    parser = cli.build_parser()
    values = dict(max_new_tokens="7", max_length="30", min_new_tokens="2", temperature="0.5", top_k="5",
                  top_p="0.9", min_p="0.1", repetition_penalty="1.2", num_beams="2", length_penalty="0.5",
                  early_stopping="never", num_return_sequences="2", eos_token_id="2,3", pad_token_id="0",
                  bos_token_id="1", top_logprobs="4", logprobs_mode="processed", min_length="3",
                  no_repeat_ngram_size="2", bad_words_ids="5;7,8", suppress_tokens="9,10", begin_suppress_tokens="11",
                  sequence_bias="7,8=-2.5;9=1", typical_p="0.9", epsilon_cutoff="0.01", eta_cutoff="0.02",
                  exponential_decay_length_penalty="4,1.1", forced_bos_token_id="1", forced_eos_token_id="2",
                  stop_strings='["\\n\\n", "###"]', presence_penalty="0.5", frequency_penalty="-0.5")
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    assert fields == set(values) | {"do_sample", "renormalize_logits"}
    for spelling in (lambda n: n.replace("_", "-"), lambda n: n):
        argv = ["generate", "x", "--do-sample"]
        for name, v in values.items():
            argv += [f"--{spelling(name)}", v]
        overrides = cli.overrides(parser.parse_args(argv))
        cfg = GenerationConfig().replace(**overrides)
        assert cfg.max_new_tokens == 7 and cfg.eos_token_id == (2, 3) and cfg.early_stopping == "never"
        assert cfg.do_sample is True and cfg.min_p == 0.1 and cfg.logprobs_mode == "processed"
        assert cfg.bad_words_ids == ((5,), (7, 8)) and cfg.sequence_bias == (((7, 8), -2.5), ((9,), 1.0))
        assert cfg.stop_strings == ("\n\n", "###") and cfg.exponential_decay_length_penalty == (4, 1.1)
        cfg.replace(num_beams=1).validate(128)
    assert cli.overrides(parser.parse_args(["generate", "x"])) == {}  # unset flags keep the model's defaults
    assert cli.overrides(parser.parse_args(["generate", "x", "--no-do-sample"])) == {"do_sample": False}


def test_user_mistakes_are_clear_errors(tmp_path, capsys, monkeypatch):
    model = text_model_dir()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('["unterminated"')
    wrong_shape = tmp_path / "wrong.json"
    wrong_shape.write_text('{"prompt": "x"}')
    monkeypatch.setattr(jaxgen.loading, "BUNDLED_MODEL", str(tmp_path / "no-demo-model"))
    cases = [
        (["generate", "--model", str(tmp_path / "nope"), "hi"], "does not exist"),
        (["generate", "hi"], "bundled demo model is missing"),
        (["generate", "--model", no_tokenizer_dir(), "hi"], "has no tokenizer"),
        (["generate", "--model", model, "hi", "--top-p", "2"], "top_p"),
        (["generate", "--model", model, "hi", "--temperature", "-1"], "temperature"),
        (["generate", "--model", model, "hi", "--logprobs-mode", "best"], "invalid choice"),
        (["generate", "--model", model, "hi", "--top-k", "many"], "invalid int value"),
        (["generate", "--model", model, "hi", "--early-stopping", "maybe"], "true, false or never"),
        (["generate", "--model", model, "hi", "--dtype", "float64"], "invalid choice"),
        (["generate", "--model", model, "--prompts", str(bad_json)], "does not parse"),
        (["generate", "--model", model, "--prompts", str(wrong_shape)], "list of strings"),
        (["generate", "--model", model, "--prompts", str(tmp_path / "missing.txt")], "cannot read"),
        (["generate", "--model", model], "no prompt given"),
        (["generate", "--model", model, "--ids", "1,2,x"], "not a list of token ids"),
        (["score", "--model", model, "hi", "--top-logprobs", "100000"], "top_logprobs"),
        (["frobnicate"], "invalid choice"),
        (["convert"], "required"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error:" in err and message in err and "Traceback" not in err, (argv, err)


def test_convert_delegates_to_the_converter(tmp_path, capsys):
    folder, _ = hf_checkpoint("llama_gqa")
    out = tmp_path / "converted"
    assert cli.main(["convert", folder, str(out), "--quiet"]) == 0
    from checkpoints_convert import is_converted

    assert is_converted(out)
    capsys.readouterr()
    assert cli.main(["convert", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: jaxgen convert")


def test_cli_keeps_compiled_programs_in_a_persistent_cache(tmp_path):
    """A second `jaxgen generate` finds the first one's programs in the cache folder (JAXGEN_COMPILATION_CACHE)."""
    import subprocess
    import sys

    cache = tmp_path / "xla"
    env = dict(os.environ, JAXGEN_COMPILATION_CACHE=str(cache), JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "jaxgen", "generate", "--json", "--ids", "--max-new-tokens", "4", "--seed", "1",
           "1,2,3"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    entries = {p.name for p in cache.iterdir()}
    assert any("_compiled" in name for name in entries), entries
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0 and second.stdout == first.stdout
    off = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env=dict(env, JAXGEN_COMPILATION_CACHE="off", XDG_CACHE_HOME=str(tmp_path / "none")))
    assert off.returncode == 0 and not (tmp_path / "none").exists()
