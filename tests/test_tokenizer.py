"""Text in and out: a tiny random Llama with a real (trained in the test) byte-level BPE tokenizer."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen.text.detokenize import IncrementalText
from jaxgen.text.generate_text import generate_text
from jaxgen.text.tokenizer import TokenizerError, encode_prompts, has_tokenizer, load_tokenizer

CORPUS = [
    "hello world, the quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a small model that learned to write text.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
GENERATION_DEFAULTS = dict(max_new_tokens=6, do_sample=True, top_k=20, temperature=0.9)
_ROOT = tempfile.mkdtemp(prefix="jaxgen-text-")


@functools.lru_cache(maxsize=None)
def text_model_dir() -> str:
    """A folder with a tiny random Llama, a byte-level BPE tokenizer (BOS added, chat template) and a
    generation_config.json that turns sampling on (so tests can see its defaults being used)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    assert (fast.pad_token_id, fast.bos_token_id, fast.eos_token_id) == (0, 1, 2)
    config = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=4096, initializer_range=0.3, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tempfile.mkdtemp(prefix="textmodel-", dir=_ROOT)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                  **GENERATION_DEFAULTS).save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=None)
def no_tokenizer_dir() -> str:
    """The same model without its tokenizer files."""
    src = text_model_dir()
    folder = tempfile.mkdtemp(prefix="notok-", dir=_ROOT)
    for name in os.listdir(src):
        if name not in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                        "special_tokens_map.json"):
            shutil.copy(os.path.join(src, name), folder)
    return folder


@functools.lru_cache(maxsize=None)
def text_model():
    return jaxgen.load_model(text_model_dir())


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(text_model_dir())


def test_tokenizer_loads_from_the_folder(tokenizer):
    assert has_tokenizer(text_model_dir())
    assert tokenizer("hello world")["input_ids"][0] == 1  # BOS from the tokenizer's own post-processor
    assert tokenizer.decode(tokenizer("hello world")["input_ids"], skip_special_tokens=True) == "hello world"


def _left_padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    t = max(map(len, rows))
    ids, mask = np.zeros((len(rows), t), np.int32), np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    return ids, mask


def test_generate_text_greedy_details_match_generate(tokenizer):
    model = text_model()
    prompts = ["hello world", "The capital of France is"]
    res = generate_text(model, tokenizer, prompts, do_sample=False, max_new_tokens=10, top_logprobs=3)
    assert [r.prompt for r in res] == prompts and [r.prompt_index for r in res] == [0, 1]
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    out = jaxgen.generate(model, *_left_padded(encoded), do_sample=False, max_new_tokens=10, top_logprobs=3,
                          pad_token_id=0)
    for i, (r, ids) in enumerate(zip(res, encoded)):
        assert r.prompt_ids == ids
        n = int(out.num_generated[i])
        assert r.token_ids == np.asarray(out.new_tokens)[i, :n].tolist()
        np.testing.assert_allclose([t.logprob for t in r.tokens], np.asarray(out.token_logprobs)[i, :n], atol=1e-6)
        assert [[a.id for a in t.alternatives] for t in r.tokens] == np.asarray(out.top_token_ids)[i, :n].tolist()
        np.testing.assert_allclose([[a.logprob for a in t.alternatives] for t in r.tokens],
                                   np.asarray(out.top_logprobs)[i, :n], atol=1e-6)
        assert all(t.text == tokenizer.decode([t.id]) for t in r.tokens)
        assert all(a.text == tokenizer.decode([a.id]) for t in r.tokens for a in t.alternatives)
        text_ids = r.token_ids[:-1] if r.finish_reason == "eos" else r.token_ids
        assert r.text == tokenizer.decode(text_ids, skip_special_tokens=True)
        assert r.finish_reason == ("eos" if r.token_ids[-1] == 2 else "length")
        assert r.finish_reason == "eos" or len(r.token_ids) == 10
        d = r.to_dict()
        assert set(d) == {"prompt", "text", "finish_reason", "tokens"}
        assert set(d["tokens"][0]) == {"id", "text", "logprob", "alternatives"}


def test_streaming_defaults_and_seed_reproducibility(tokenizer):
    """Sampling from generation_config.json's defaults (max_new_tokens=6, do_sample); text arrives in chunks."""
    model = text_model()
    runs = []
    for _ in range(2):
        pieces: list[tuple[int, str]] = []
        res = generate_text(model, tokenizer, "Once upon a time", key=jax.random.key(1), min_new_tokens=6,
                            stream_every=2, streamer=lambda row, text: pieces.append((row, text)))
        runs.append((res, pieces))
    (res, pieces), (res2, _) = runs
    assert res[0].token_ids == res2[0].token_ids  # same key, same tokens
    assert res[0].finish_reason == "length" and len(res[0].token_ids) == GENERATION_DEFAULTS["max_new_tokens"]
    assert {row for row, _ in pieces} == {0}
    assert len(pieces) >= 2, "text should arrive in several chunks, not once at the end"
    assert "".join(p for _, p in pieces) == res[0].text
    assert not any(p.endswith("\ufffd") for _, p in pieces[:-1])
    with pytest.raises(ValueError, match="key"):
        generate_text(model, tokenizer, ["hello"])  # sampling (from generation_config.json) needs a key


def test_incremental_text_holds_back_partial_utf8(tokenizer):
    ids = tokenizer("日本", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 3  # not in the training corpus: byte tokens, several per character
    dec = IncrementalText(tokenizer)
    pieces = [dec.update(ids[:i]) for i in range(1, len(ids) + 1)]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "日本"


def test_chat_template(tokenizer):
    [ids] = encode_prompts(tokenizer, ["hi there"], chat=True)
    assert tokenizer.decode(ids) == "<s>user: hi there\nassistant:"
    tokenizer_without = load_tokenizer(text_model_dir())
    tokenizer_without.chat_template = None
    with pytest.raises(TokenizerError, match="no chat template"):
        encode_prompts(tokenizer_without, ["hi"], chat=True)


def test_folder_without_tokenizer_is_clear_and_ids_still_work():
    folder = no_tokenizer_dir()
    assert not has_tokenizer(folder)
    with pytest.raises(TokenizerError, match="has no tokenizer.*token ids"):
        load_tokenizer(folder)
    model = jaxgen.load_model(folder)
    with pytest.raises(TokenizerError, match="need a tokenizer"):
        generate_text(model, None, ["hello"], do_sample=False)
    # Id-level generation, with and without generate_text (the program compiled above: no new compilation).
    rows = [[1, 40, 41], [1, 50, 51, 52, 53]]
    out = jaxgen.generate(model, *_left_padded(rows), do_sample=False, max_new_tokens=10, top_logprobs=3,
                          pad_token_id=0)
    res = generate_text(model, None, rows, do_sample=False, max_new_tokens=10, top_logprobs=3)
    for i in range(2):
        n = int(out.num_generated[i])
        assert res[i].token_ids == np.asarray(out.new_tokens)[i, :n].tolist()
        assert res[i].text is None and res[i].tokens[0].text is None


_NO_TORCH = "import sys; sys.modules['torch'] = None\n"  # find_spec('torch') is None: transformers sees no torch


def _stderr_without_torch(code: str) -> str:
    import subprocess
    import sys

    quiet = ("TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS")  # conftest sets the first
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    run = subprocess.run([sys.executable, "-c", _NO_TORCH + code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stderr


def test_missing_torch_advice_is_kept_out_of_jaxgen_output():
    from jaxgen.loading import BUNDLED_MODEL
    from jaxgen.text._hf import TORCH_ADVICE

    # The advice exists, and comes through transformers' own logging (its verbosity silences it) ...
    assert TORCH_ADVICE in _stderr_without_torch("import transformers")
    assert TORCH_ADVICE not in _stderr_without_torch(
        "import os; os.environ['TRANSFORMERS_VERBOSITY'] = 'error'; import transformers")
    # ... and jaxgen's import of transformers drops just that record: the tokenizer still works, and transformers'
    # other warnings still come out.
    err = _stderr_without_torch(
        "from jaxgen.text._hf import import_transformers\n"
        "transformers = import_transformers()\n"
        f"tok = transformers.AutoTokenizer.from_pretrained({BUNDLED_MODEL!r})\n"
        "assert tok.decode(tok('hi')['input_ids'], skip_special_tokens=True) == 'hi'\n"
        "transformers.utils.logging.get_logger('transformers').warning('still here')\n")
    assert TORCH_ADVICE not in err and "still here" in err
