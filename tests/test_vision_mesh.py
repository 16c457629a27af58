"""Image models on a (2, 4) mesh of 8 fake CPU devices (tests/vision_mesh_worker.py, one subprocess): the vision
side runs replicated beside the sharded language model, and beam search over two image prompts gives one device's
tokens, scores and logprobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import test_vision_gemma3
import test_vision_minicpmv


@pytest.mark.parametrize("name", ["gemma3", "minicpmv4_6"])
def test_image_models_on_a_mesh_match_one_device(name, report):
    r = report[name]
    assert r["same_tokens"] and r["score_diff"] < 1e-4 and r["logprob_diff"] < 1e-4, r


@pytest.fixture(scope="module")
def report():
    folders = [test_vision_gemma3.vlm()[0], test_vision_minicpmv.vlm()[0]]
    tests = os.path.dirname(__file__)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(tests, "vision_mesh_worker.py"), *folders],
                          capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])
