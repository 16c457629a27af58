"""README's "A sample" block is what the call it documents returns, so the README cannot drift from the code.

The call: the prompt ``def fibonacci(n):`` with the bundled model's own ``generation_config.json`` (sampling,
temperature 0.8, top-p 0.95, top-k 50), 64 new tokens and ``key=jax.random.key(0)``, through ``generate_text`` and
through ``jaxgen.generate`` on the same token ids; ``training_metrics.json`` keeps the same text.
"""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen.loading import BUNDLED_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT, SEED, MAX_NEW = "def fibonacci(n):", 0, 64


def readme_sample() -> str:
    """The first fenced block under README's ``### A sample`` heading (without the fences)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("\n### A sample\n", 1)
    assert len(section) == 2, "README.md has no '### A sample' section"
    block = re.search(r"^```[a-z]*\n(.*?)\n```$", section[1], re.S | re.M)
    assert block, "no fenced block under '### A sample'"
    return block.group(1)


@pytest.fixture(scope="module")
def documented() -> str:
    """Prompt + continuation as the documented call returns it; ``jaxgen.generate`` must give the same tokens."""
    model = jaxgen.load_model()
    tokenizer = jaxgen.load_tokenizer(BUNDLED_MODEL)
    [result] = jaxgen.generate_text(model, tokenizer, PROMPT, key=jax.random.key(SEED), max_new_tokens=MAX_NEW)
    ids = np.asarray([result.prompt_ids], np.int32)
    out = jaxgen.generate(model, ids, key=jax.random.key(SEED), max_new_tokens=MAX_NEW)
    n = int(out.num_generated[0])
    assert [int(t) for t in np.asarray(out.new_tokens)[0, :n]] == result.token_ids
    return PROMPT + result.text


def test_readme_sample_is_what_the_documented_call_returns(documented):
    sample = readme_sample()
    assert sample.startswith(PROMPT)
    assert sample == documented, f"README's sample is stale; the documented call now returns:\n{documented}"


def test_training_metrics_keep_the_same_sample():
    with open(os.path.join(BUNDLED_MODEL, "training_metrics.json"), encoding="utf-8") as f:
        sample = json.load(f)["sample"]
    assert (sample["prompt"], sample["seed"]) == (PROMPT, SEED)
    assert sample["text"] == readme_sample()
