"""No silent wrong answers, no tracebacks: every bad input gets a named error before anything runs.

``GenerationConfig`` values, the command line (in-process through ``jaxgen.cli.app.main``: one ``error:`` line,
exit status 2) and a tokenizer folder without a vocabulary.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

import jaxgen
from conftest import hf_checkpoint
from jaxgen.api.generation_config import GenerationConfig
from jaxgen.cli import app as cli
from jaxgen.cli.common import json_line
from jaxgen.text.tokenizer import TokenizerError, load_tokenizer

VOCAB = 128
NAN, INF = float("nan"), float("inf")


def rejects(field: str, **kw) -> str:
    """``GenerationConfig(**kw).validate(VOCAB)`` raises ValueError starting with ``GenerationConfig.<field>=``."""
    with pytest.raises(ValueError) as err:
        GenerationConfig(**kw).validate(VOCAB)
    message = str(err.value)
    assert message.startswith(f"GenerationConfig.{field}="), message
    return message


# --- GenerationConfig ------------------------------------------------------------------------------------------------

def test_numpy_scalars_become_python_values():
    cfg = GenerationConfig(temperature=np.float32(0.7), top_k=np.int64(5), do_sample=np.bool_(True),
                           max_new_tokens=np.int32(4), eos_token_id=[np.int64(2), 3], pad_token_id=np.uint8(0),
                           top_p=np.float64(0.9), early_stopping=np.bool_(False), num_beams=np.array(1))
    cfg.validate(VOCAB)
    assert type(cfg.temperature) is float and cfg.temperature == pytest.approx(0.7)
    assert type(cfg.top_k) is int and type(cfg.do_sample) is bool and type(cfg.pad_token_id) is int
    assert type(cfg.early_stopping) is bool and type(cfg.num_beams) is int and type(cfg.top_p) is float
    assert cfg.eos_token_id == (2, 3) and all(type(t) is int for t in cfg.eos_token_ids)
    assert GenerationConfig(eos_token_id=np.array([2, 3])).eos_token_ids == (2, 3)
    assert GenerationConfig().replace(top_k=np.int16(3)).top_k == 3
    json.dumps(cfg.to_dict())  # plain Python values all the way


@pytest.mark.parametrize("value", ["23", "</s>", True, False, 2.0, [2, "3"], [True], {"id": 2}, [[2]]])
def test_eos_token_id_must_be_ids(value):
    rejects("eos_token_id", eos_token_id=value)


def test_eos_token_ids_never_iterates_a_string():
    assert GenerationConfig(eos_token_id="23").eos_token_ids == ("23",)  # not (2, 3); validate rejects it


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repetition_penalty", "length_penalty"])
def test_nan_is_refused_for_every_float(field):
    rejects(field, do_sample=True, **{field: NAN})
    rejects(field, do_sample=False, **{field: NAN})


@pytest.mark.parametrize("field,value", [("top_p", INF), ("top_p", -INF), ("min_p", INF), ("min_p", -INF),
                                         ("repetition_penalty", INF), ("repetition_penalty", -INF),
                                         ("length_penalty", INF), ("length_penalty", -INF),
                                         ("temperature", -INF), ("temperature", 0.0), ("temperature", 1e-40),
                                         ("repetition_penalty", 1e-40), ("length_penalty", 1e39), ("top_p", 1e-46)])
def test_infinities_and_values_float32_cannot_hold(field, value):
    rejects(field, do_sample=True, **{field: value})


def test_uniform_sampling_stays_valid():
    GenerationConfig(do_sample=True, temperature=INF).validate(VOCAB)  # transformers' uniform sampling
    GenerationConfig(do_sample=False, temperature=0.0).validate(VOCAB)  # greedy ignores temperature


@pytest.mark.parametrize("field", ["pad_token_id", "bos_token_id"])
def test_pad_and_bos_must_be_tokens_of_the_model(field):
    message = rejects(field, **{field: VOCAB})  # a pad token added to the tokenizer, embeddings not resized
    assert f"vocab_size={VOCAB}" in message and "resize" in message and "EOS" in message
    rejects(field, **{field: -1})
    rejects(field, **{field: "<pad>"})
    GenerationConfig(**{field: VOCAB - 1}).validate(VOCAB)
    GenerationConfig(**{field: None}).validate(VOCAB)


def test_generate_refuses_pad_equal_to_vocab_size():
    model = jaxgen.load_model(hf_checkpoint("llama_gqa")[0])
    with pytest.raises(ValueError, match=rf"GenerationConfig.pad_token_id={VOCAB} .*vocab_size={VOCAB}"):
        jaxgen.generate(model, np.array([[5, 9]]), max_new_tokens=2, pad_token_id=VOCAB)


INT_FIELDS = ["max_new_tokens", "max_length", "min_new_tokens", "num_beams", "num_return_sequences", "top_k",
              "top_logprobs"]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [2**31, 10**30, 3e9, 4.0, -1, "8", [8], {"n": 8}, True, NAN])
def test_integers_are_bounded_and_typed(field, value):
    rejects(field, **{field: value})


@pytest.mark.parametrize("field,value", [("do_sample", None), ("do_sample", "yes"), ("do_sample", 1),
                                         ("max_length", None), ("top_k", None), ("temperature", None),
                                         ("temperature", "0.7"), ("early_stopping", 1), ("early_stopping", "always"),
                                         ("logprobs_mode", None), ("logprobs_mode", ["raw"]), ("top_p", "1")])
def test_wrong_types_and_none_where_not_allowed(field, value):
    rejects(field, **{field: value})


@pytest.mark.parametrize("value", [[1, 2], "max_new_tokens=4", 3, None])
def test_from_dict_needs_a_mapping(value):
    with pytest.raises(ValueError, match="from_dict expects a mapping"):
        GenerationConfig.from_dict(value)


def test_from_pretrained_names_the_file(tmp_path):
    (tmp_path / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="generation_config.json: .*mapping"):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": "</s>"}')
    with pytest.raises(ValueError, match="GenerationConfig.eos_token_id="):
        GenerationConfig.from_pretrained(tmp_path).validate(VOCAB)


# --- tokenizer -------------------------------------------------------------------------------------------------------

def _model_with_tokenizer_config_only(tmp_path) -> str:
    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoint("llama_gqa")[0], folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return str(folder)


def test_tokenizer_config_alone_is_no_tokenizer(tmp_path):
    folder = _model_with_tokenizer_config_only(tmp_path)
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(folder)  # transformers 5 would build an empty tokenizer that encodes every text to []
    message = str(err.value)
    assert "only tokenizer_config.json" in message and "tokenizer.json" in message and "tokenizer.model" in message


# --- command line ----------------------------------------------------------------------------------------------------

def fails(capsys, argv, *expected: str) -> str:
    """``jaxgen ARGV`` exits with 2 and one ``error:`` line holding every expected piece; no traceback."""
    assert cli.main(argv) == 2, argv
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err and all(e in errors[0] for e in expected), (argv, captured.err)
    return errors[0]


@pytest.mark.parametrize("argv,expected", [
    (["--seed", "99999999999999999999"], ["--seed", "< 2**32"]),
    (["--seed", "-1"], ["--seed", ">= 0"]),
    (["--max-new-tokens", "3000000000"], ["max_new_tokens", "2**31"]),
    (["--pad-token-id", "99999999999"], ["pad_token_id", "vocab_size=4096"]),
    (["--pad-token-id", "4096"], ["pad_token_id", "vocab_size=4096", "resize"]),
    (["--eos-token-id", "4096"], ["eos_token_id", "vocab_size=4096"]),
    (["--top-k", "99999999999"], ["top_k", "2**31"]),
    (["--do-sample", "--temperature", "nan"], ["temperature=nan"]),
    (["--length-penalty", "inf"], ["length_penalty=inf"]),
    (["--mesh", "0,1"], ["--mesh: the data axis must be >= 1, got 0"]),
    (["--mesh", "1,0"], ["--mesh: the model axis must be >= 1, got 0"]),
    (["--mesh", "2"], ["--mesh", "DATA,MODEL"]),
    (["--mesh", "a,b"], ["--mesh: the data axis must be an integer", "'a'"]),
    (["--stream-every", "0"], ["--stream-every", ">= 1"]),
])
def test_generate_flags_out_of_range(capsys, argv, expected):
    fails(capsys, ["generate", *argv, "hello"], *expected)


def test_token_ids_outside_the_vocabulary(capsys):
    fails(capsys, ["generate", "--ids", "1,99999999999"], "prompt 0", "vocab_size=4096")
    fails(capsys, ["score", "--ids", "1,-3"], "prompt 0", "vocab_size=4096")


def test_a_long_prompt_late_in_the_file_fails_before_any_output(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n" + "word " * 400 + "\n")
    fails(capsys, ["generate", "--prompts", str(prompts), "--max-new-tokens", "2"], "prompt 1",
          "max_position_embeddings=256")
    fails(capsys, ["score", "--prompts", str(prompts)], "prompt 1", "max_position_embeddings=256")


def test_unexpected_exceptions_are_one_line(capsys, monkeypatch):
    from jaxgen.cli import generate

    for exc in (RuntimeError("RESOURCE_EXHAUSTED: out of memory\n\nlong XLA detail"), OSError(28, "No space left"),
                OverflowError("int too large"), TypeError("bad operand")):
        def boom(*args, exc=exc, **kw):
            raise exc

        monkeypatch.setattr(generate, "load", boom)
        line = fails(capsys, ["generate", "hi"], type(exc).__name__, "JAXGEN_TRACEBACK=1")
        assert "long XLA detail" not in line
    monkeypatch.setenv("JAXGEN_TRACEBACK", "1")
    with pytest.raises(TypeError):
        cli.main(["generate", "hi"])


def test_interrupt_is_130(capsys, monkeypatch):
    from jaxgen.cli import generate

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "load", interrupted)
    assert cli.main(["generate", "hi"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_json_has_no_nan_or_infinity(capsys):
    assert json_line({"a": NAN, "b": [INF, -INF, 1.5], "c": {"d": (NAN,)}}) == \
        '{"a": null, "b": [null, null, 1.5], "c": {"d": [null]}}'
    # processed top-2 sampling: the third alternative has logprob -inf, written as null.
    assert cli.main(["generate", "hi", "--json", "--do-sample", "--top-k", "2", "--top-logprobs", "3",
                     "--logprobs-mode", "processed", "--max-new-tokens", "2", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    record = json.loads(out)
    assert record["tokens"][0]["alternatives"][2]["logprob"] is None
    assert "max_length" not in record["config"] and record["config"]["max_new_tokens"] == 2  # max_length unused
    assert record["seed"] == 0


def test_deterministic_modes_print_no_seed(capsys):
    for mode in (["--no-do-sample"], ["--no-do-sample", "--num-beams", "2"]):
        assert cli.main(["generate", "hi", "--max-new-tokens", "2", "--json", *mode]) == 0
        captured = capsys.readouterr()
        assert "seed" not in captured.err and json.loads(captured.out)["seed"] is None
    assert cli.main(["generate", "hi", "--max-new-tokens", "2", "--do-sample", "--seed", "7"]) == 0
    assert "seed: 7" in capsys.readouterr().err


def test_crosscheck_without_torch_says_which_extra(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    fails(capsys, ["crosscheck"], "torch", "pip install 'jaxgen[crosscheck]'")


def test_crosscheck_defaults_to_the_bundled_model(capsys, monkeypatch):
    import jaxgen.crosscheck.compare as compare_module
    from jaxgen.loading import BUNDLED_MODEL

    seen = {}

    class Report:
        has_mismatch = False

        def table(self):
            return "ok"

    def fake_compare(hf_dir, prompts, **kw):
        seen.update(hf_dir=hf_dir, seeds=kw["seeds"])
        return Report()

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    assert cli.main(["crosscheck", "--seeds", "0,4294967295"]) == 0
    assert seen == dict(hf_dir=BUNDLED_MODEL, seeds=[0, 2**32 - 1])
    capsys.readouterr()
    fails(capsys, ["crosscheck", "--seeds", "1,4294967296"], "--seeds", "2**32")
    fails(capsys, ["crosscheck", "--max-new-tokens", "3000000000"], "--max-new-tokens", "2**31")


def test_text_prompt_with_a_vocabulary_less_tokenizer_folder(tmp_path, capsys):
    folder = _model_with_tokenizer_config_only(tmp_path)
    fails(capsys, ["generate", "--model", folder, "hi"], "only tokenizer_config.json", "tokenizer.json")
    assert cli.main(["generate", "--model", folder, "--ids", "5,9", "--max-new-tokens", "1", "--no-do-sample"]) == 0


def test_bad_config_json_is_a_named_error(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoint("llama_gqa")[0], folder)
    raw = json.loads((folder / "config.json").read_text())
    for field, value in (("eos_token_id", "</s>"), ("max_position_embeddings", "4k"), ("hidden_size", 64.0)):
        (folder / "config.json").write_text(json.dumps({**raw, field: value}))
        fails(capsys, ["generate", "--model", str(folder), "--ids", "5,9"], "config.json", field)
