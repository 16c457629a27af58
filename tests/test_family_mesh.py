"""Every family of tests/conftest.py MATRIX on a (2, 4) mesh of 8 fake CPU devices gives one device's greedy tokens,
top-k ids and logprobs (tests/matrix_mesh_worker.py, one subprocess for all families). The Llama line (Llama,
Mistral, Qwen2, Qwen3) runs on every mesh shape and mode in tests/test_sharding.py, so it is left out here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import MATRIX, matrix_checkpoint

TOL = 1e-4
MESH_FAMILIES = [n for n in MATRIX if n not in ("llama_gqa", "mistral_window", "qwen2_bias", "qwen3_qknorm")]


@pytest.fixture(scope="module")
def mesh_report():
    folders = {name: matrix_checkpoint(name)[0] for name in MESH_FAMILIES}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    worker = os.path.join(os.path.dirname(__file__), "matrix_mesh_worker.py")
    proc = subprocess.run([sys.executable, worker, json.dumps(folders)], capture_output=True, text=True, env=env,
                          timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.parametrize("name", MESH_FAMILIES)
def test_mesh_2x4_equals_one_device(mesh_report, name):
    row = mesh_report[name]
    assert row["same_tokens"] and row["same_top_ids"], row
    # A mesh sums partial products in another order (tensor-parallel matmuls): ~1e-5 of float32 noise.
    assert row["logprob_diff"] <= TOL, row
