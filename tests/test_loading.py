"""``load_model``'s checks of what sits beside the weights: ``generation_config.json``."""

from __future__ import annotations

import json
import os

import pytest

import jaxgen
from jaxgen.errors import CheckpointError
from jaxgen.loading import BUNDLED_MODEL


def _copy_with_generation_config(folder, text: str | None) -> str:
    """The bundled model's files (linked, not copied) with ``generation_config.json`` replaced by ``text``."""
    folder.mkdir()
    for name in os.listdir(BUNDLED_MODEL):
        if name != "generation_config.json":
            os.symlink(os.path.join(BUNDLED_MODEL, name), folder / name)
    if text is not None:
        (folder / "generation_config.json").write_text(text)
    return str(folder)


@pytest.mark.parametrize("text, kind", [('[{"max_new_tokens": 5}]', "an array"), ('"greedy"', "a string"),
                                        ("7", "a number"), ("null", "null")])
def test_generation_config_that_is_not_an_object(tmp_path, text, kind):
    folder = _copy_with_generation_config(tmp_path / "m", text)
    gen_file = os.path.join(folder, "generation_config.json")
    with pytest.raises(CheckpointError, match="not a JSON object") as e:
        jaxgen.load_model(folder)
    assert str(e.value).startswith(gen_file) and f"holds {kind}," in str(e.value)


def test_generation_config_invalid_json_or_absent(tmp_path):
    with pytest.raises(CheckpointError, match="generation_config.json: not valid JSON"):
        jaxgen.load_model(_copy_with_generation_config(tmp_path / "bad", "{max_new_tokens: 5"))
    assert jaxgen.load_model(_copy_with_generation_config(tmp_path / "none", None)).generation_config is None
    settings = {"max_new_tokens": 3, "do_sample": False}
    model = jaxgen.load_model(_copy_with_generation_config(tmp_path / "ok", json.dumps(settings)))
    assert model.generation_config == settings
