"""Multi-device generation on 8 fake CPU devices (in a subprocess, so the rest of the suite keeps one device)."""

import json
import os
import subprocess
import sys

import pytest

from jaxgen.parallel.sharding import MESH_AXES, PARAM_AXES


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    worker = os.path.join(os.path.dirname(__file__), "sharding_worker.py")
    proc = subprocess.run([sys.executable, worker], capture_output=True, text=True, env=env, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_every_mesh_matches_single_device(report):
    rows = report["compare"]
    meshes = {tuple(r["mesh"]) for r in rows}
    assert meshes == {(8, 1), (1, 8), (2, 4), (4, 2)}
    assert {r["family"] for r in rows} == {"llama", "mistral", "qwen2", "qwen3"}
    assert {r["mode"] for r in rows} == {"greedy", "beam", "sample"}
    # every mode on every mesh shape, by one family or another
    assert {(tuple(r["mesh"]), r["mode"]) for r in rows} == {(m, mode) for m in meshes for mode in
                                                              ("greedy", "beam", "sample")}
    for r in rows:
        assert r["same_tokens"] and r["same_top_ids"], r
        # Tensor parallelism adds the partial sums of o_proj / down_proj / lm_head in another order: float32
        # rounding (a few ulps of logprobs around -10), not a different computation.
        assert r["logprob_diff"] <= 3e-5, r
    print("max logprob diff over meshes:", max(r["logprob_diff"] for r in rows))


def test_compiled_program_uses_the_table_shardings(report):
    used = report["shardings"]
    assert used, "no shardings captured"
    split = [name for name, (got, want) in used.items() if "model" in want]
    # q/o projections, MLP and vocabulary are split on a (2, 4) mesh; qwen3's single KV head is replicated.
    assert any("q_proj" in n for n in split) and any("down_proj" in n for n in split)
    assert any("embed_tokens" in n for n in split) and not any("k_proj" in n for n in split)
    for name, (got, want) in used.items():
        assert got == want, f"{name}: compiled with {got}, table says {want}"


def test_bad_mesh_error_names_the_dimension(report):
    heads = report["errors"]["heads"]
    assert heads and "num_attention_heads=8" in heads and "[1, 2, 4, 8]" in heads


def test_any_batch_runs_on_any_mesh(report):
    """Batches of 1, 3 and 6 on a data axis of 4: filler rows inside, the caller's rows out, same tokens."""
    for n, r in report["odd_batches"].items():
        assert r["shape"][0] == int(n) and r["same_tokens"], (n, r)


def test_table_is_declarative_and_total():
    from jaxgen.config import ModelConfig
    from jaxgen.model import param_shapes
    from jaxgen.parallel.sharding import param_spec

    cfg = ModelConfig.from_hf_dict(dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    for name, shape in param_shapes(cfg).items():
        spec = param_spec(name, len(shape), MESH_AXES)
        assert len(spec) == len(shape)
    assert len(PARAM_AXES) >= 10


def test_cli_mesh_runs_one_prompt_like_one_device():
    """`jaxgen generate --mesh 2,4` with a single prompt (batch 1 on a data axis of 2) gives one device's tokens."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               JAXGEN_COMPILATION_CACHE="off")
    cmd = [sys.executable, "-m", "jaxgen", "generate", "--json", "--seed", "3", "--max-new-tokens", "6",
           "def fibonacci(n):"]
    runs = [subprocess.run(cmd + extra, capture_output=True, text=True, env=env, timeout=600)
            for extra in ([], ["--mesh", "2,4"])]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    single, meshed = (json.loads(r.stdout.splitlines()[-1]) for r in runs)
    assert [t["id"] for t in meshed["tokens"]] == [t["id"] for t in single["tokens"]]
    assert meshed["text"] == single["text"]
