"""Hub ids (``org/name``) resolve from the local Hugging Face cache only; nothing is ever downloaded."""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pytest

import jaxgen
from jaxgen.errors import CheckpointError
from jaxgen.loading import BUNDLED_MODEL, hub_cache_dir, resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: str, repo_id: str, source: str = BUNDLED_MODEL) -> str:
    """Lay ``source``'s files out as huggingface_hub does: ``models--org--name/{blobs,refs/main,snapshots/<hash>}``
    with the snapshot's files symlinked to blobs. Returns the snapshot folder."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", COMMIT)
    os.makedirs(os.path.join(repo, "blobs"))
    os.makedirs(os.path.join(repo, "refs"))
    os.makedirs(snapshot)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(COMMIT)
    for i, name in enumerate(sorted(os.listdir(source))):
        blob = os.path.join(repo, "blobs", f"{i:040x}")
        shutil.copy(os.path.join(source, name), blob)
        os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
    return snapshot


def _greedy(model: jaxgen.Model) -> np.ndarray:
    return np.asarray(jaxgen.generate(model, np.array([[0, 5, 6, 7]]), max_new_tokens=5, do_sample=False).sequences)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("jaxgen tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_id_loads_from_the_cache(tmp_path, monkeypatch, no_network, env):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    if env == "HF_HUB_CACHE":
        cache = str(tmp_path / "cache")
        monkeypatch.setenv("HF_HUB_CACHE", cache)
    else:
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
        cache = str(tmp_path / "home" / "hub")
    assert hub_cache_dir() == cache
    snapshot = fake_hub_cache(cache, "org/tiny-demo")
    assert os.path.samefile(resolve_model_path("org/tiny-demo"), snapshot)

    model = jaxgen.load_model("org/tiny-demo")
    assert os.path.samefile(model.path, snapshot)
    assert model.generation_config == jaxgen.load_model().generation_config
    np.testing.assert_array_equal(_greedy(model), _greedy(jaxgen.load_model(BUNDLED_MODEL)))
    tokenizer = jaxgen.load_tokenizer(resolve_model_path("org/tiny-demo"))
    assert tokenizer.decode(tokenizer("hello")["input_ids"], skip_special_tokens=True) == "hello"


def test_hub_id_not_cached_says_how_to_download(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"never downloads.*hf download Qwen/Qwen3-0\.6B") as e:
        jaxgen.load_model("Qwen/Qwen3-0.6B")
    assert "huggingface-cli download Qwen/Qwen3-0.6B" in str(e.value)
    assert "models--Qwen--Qwen3-0.6B" in str(e.value) and str(tmp_path / "empty") in str(e.value)


def test_existing_folder_wins_over_a_cached_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    fake_hub_cache(str(tmp_path / "cache"), "org/name")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert resolve_model_path("org/name") == "org/name"


def test_files_and_missing_paths(tmp_path):
    config = os.path.join(BUNDLED_MODEL, "config.json")
    with pytest.raises(CheckpointError, match="is a file; pass the checkpoint folder"):
        jaxgen.load_model(config)
    with pytest.raises(CheckpointError, match="does not exist"):
        jaxgen.load_model(tmp_path / "nope")
    assert resolve_model_path(None) == BUNDLED_MODEL
