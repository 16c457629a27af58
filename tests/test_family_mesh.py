"""Families of tests/conftest.py MATRIX on meshes of 8 fake CPU devices ((2, 4), and more shapes for the expert
splits) give one device's greedy tokens, top-k ids and logprobs (tests/matrix_mesh_worker.py, one subprocess for all of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import MATRIX, matrix_checkpoint

TOL = 1e-4
# The families whose parameters or caches have sharding rules of their own. The Llama line (every mesh and mode)
# is in tests/test_sharding.py and Phi-3's fused tensors in tests/test_families.py; Gemma 1-3 and Qwen3-MoE use
# only rules these families already exercise (Gemma 4's sandwich norms and per-layer shapes, Mixtral's experts).
# The hybrids: Qwen3.5, Qwen3.5-MoE, and Qwen3-Next (Gated DeltaNet, full attention, experts and a dense layer).
MESH_FAMILIES = ["gpt2", "mixtral", "qwen2_moe", "qwen3_5", "qwen3_5_moe", "qwen3_next", "gemma4_moe", "deepseek_v3",
                 "gpt_oss"]
assert set(MESH_FAMILIES) <= set(MATRIX)
# Expert parallelism over more than one split: Mixtral's 8 experts over a model axis of 4, 2 and 1 (replicated),
# Qwen2-MoE's 4 over 4 and 2. Every other family: (2, 4). (A model axis of 8 does not divide the 4 heads.)
MESHES = {"mixtral": [(2, 4), (4, 2), (8, 1)], "qwen2_moe": [(2, 4), (4, 2)]}
CASES = [(name, mesh) for name in MESH_FAMILIES for mesh in MESHES.get(name, [(2, 4)])]


@pytest.fixture(scope="module")
def mesh_report():
    folders = {name: [matrix_checkpoint(name)[0], MESHES.get(name, [(2, 4)])] for name in MESH_FAMILIES}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    worker = os.path.join(os.path.dirname(__file__), "matrix_mesh_worker.py")
    proc = subprocess.run([sys.executable, worker, json.dumps(folders)], capture_output=True, text=True, env=env,
                          timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.parametrize("name, mesh", CASES, ids=[f"{n}-{d}x{m}" for n, (d, m) in CASES])
def test_mesh_equals_one_device(mesh_report, name, mesh):
    row = mesh_report[f"{name}-{mesh[0]}x{mesh[1]}"]
    assert row["same_tokens"] and row["same_top_ids"], row
    # A mesh sums partial products in another order (tensor-parallel matmuls): ~1e-5 of float32 noise.
    assert row["logprob_diff"] <= TOL, row
