"""The bundled demo model (``jaxgen/demo/model``, trained by ``python -m jaxgen.demo.train``).

It must load with no path in jaxgen and as a plain Hugging Face folder in transformers, give the same logits in
both, and still reach the held-out loss recorded when it was trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import jaxgen
from jaxgen.loading import BUNDLED_MODEL

CODE_PROMPT = '''import os


def read_lines(path, encoding="utf-8"):
    """Return the lines of the file at *path*."""
    with open(path, encoding=encoding) as f:
        return [line.rstrip("\\n") for line in f]
'''


@pytest.fixture(scope="module")
def metrics() -> dict:
    with open(os.path.join(BUNDLED_MODEL, "training_metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def model() -> jaxgen.Model:
    return jaxgen.load_model()  # no path: the bundled model


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(BUNDLED_MODEL)


def _logits(model: jaxgen.Model, tokens: np.ndarray) -> np.ndarray:
    """float32 ``[B, T, V]`` logits of a plain causal forward over unpadded ``tokens int32[B, T]``."""
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    # One jitted program: op-by-op dispatch would compile every primitive separately (several times slower).
    logits, _ = jax.jit(model.step)(model.params, jnp.asarray(tokens), positions, None, jnp.ones((b, t), jnp.int32))
    return np.asarray(logits)


def test_bundled_folder_is_a_small_hf_checkpoint(model, metrics):
    names = set(os.listdir(BUNDLED_MODEL))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    size = sum(os.path.getsize(os.path.join(BUNDLED_MODEL, n)) for n in names)
    assert size <= 20 * 1024 * 1024, f"bundled model folder is {size / 1e6:.1f} MB (limit 20 MB)"
    assert model.path == BUNDLED_MODEL and model.config.model_type == "llama"
    assert 2_000_000 <= model.num_params() <= 10_000_000
    assert model.num_params() == metrics["num_params"]
    gen = model.generation_config
    assert gen["do_sample"] is True and gen["max_new_tokens"] > 0 and 0 < gen["temperature"] <= 1


def test_logits_match_transformers(model, tokenizer):
    torch = pytest.importorskip("torch")
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, dtype=torch.float32).eval()
    ids = np.asarray([tokenizer(CODE_PROMPT)["input_ids"]], np.int32)
    assert ids[0, 0] == tokenizer.bos_token_id and ids.shape[1] > 30
    with torch.no_grad():
        ref = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    ours = _logits(model, ids)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def _heldout_slice(metrics: dict, tokenizer) -> tuple[np.ndarray, str]:
    """The held-out tokens the threshold was measured on, and where they came from.

    Re-tokenised from this machine's standard library when its files are the ones trained with (same sha256),
    which also checks that the bundled tokenizer reproduces them; otherwise the copy saved beside the model.
    """
    spec = metrics["test_slice"]
    saved = np.load(os.path.join(BUNDLED_MODEL, spec["tokens_file"])).astype(np.int32)
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = []
    for entry in spec["files"]:
        path = os.path.join(stdlib, entry["path"])
        if not os.path.isfile(path):
            return saved, "saved sample (held-out file missing from this Python)"
        with open(path, "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            return saved, "saved sample (this Python's held-out file differs)"
        texts.append(raw.decode("utf-8", errors="replace"))
    stream = np.concatenate([np.asarray(x, np.int32) for x in tokenizer(texts)["input_ids"]])
    np.testing.assert_array_equal(stream[:len(saved)], saved)
    return stream[:len(saved)], "standard library"


def test_heldout_loss_below_recorded_threshold(model, tokenizer, metrics):
    spec = metrics["test_slice"]
    tokens, source = _heldout_slice(metrics, tokenizer)
    t = spec["seq_len"]
    assert len(tokens) == spec["windows"] * t + 1
    windows = np.stack([tokens[i * t:(i + 1) * t + 1] for i in range(spec["windows"])])
    logits = _logits(model, windows[:, :-1])
    # Cross-entropy as optax computes it, without needing optax (the `demo` extra) in the tests.
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    loss = float(-jnp.take_along_axis(logp, jnp.asarray(windows[:, 1:])[..., None], axis=-1).mean())
    # The threshold must mean something: well below what predicting token frequencies alone achieves.
    assert metrics["threshold"] < metrics["unigram_heldout_loss"] - 1.0
    assert loss < metrics["threshold"], (f"held-out loss {loss:.4f} on the {source} slice is not below the "
                                         f"recorded threshold {metrics['threshold']}")
    assert abs(loss - spec["loss"]) < 1e-2, (loss, spec["loss"], source)


def test_heldout_slice_falls_back_to_saved_tokens(metrics, tokenizer):
    """A Python whose standard library differs (other version, patched file) uses the tokens saved at training."""
    changed = dict(metrics, test_slice=dict(metrics["test_slice"], files=[
        dict(entry, sha256="0" * 64) for entry in metrics["test_slice"]["files"]]))
    tokens, source = _heldout_slice(changed, tokenizer)
    assert source.startswith("saved sample")
    saved = np.load(os.path.join(BUNDLED_MODEL, metrics["test_slice"]["tokens_file"]))
    np.testing.assert_array_equal(tokens, saved)
