"""``jaxgen bench`` and ``benchmarks/gpu_check.py --smoke``: they run and report positive, finite figures.
Speed itself is not asserted (a shared CI machine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from jaxgen.cli.app import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_json_on_bundled_model(capsys):
    rc = main(["bench", "--max-new-tokens", "4", "--rounds", "1", "--batch-sizes", "1", "--modes", "greedy",
               "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert positive(res["floor"]["bandwidth_GBps"]) and positive(res["floor"]["matmul_GFLOPs"])
    assert positive(res["param_bytes"]["per_step"]) and positive(res["num_params"])
    assert res["device"]["cores"] >= 1 and res["versions"]["jax"]
    [rec] = res["results"]
    assert (rec["mode"], rec["batch"], rec["rows"]) == ("greedy", 1, 1)
    assert positive(rec["floor"]["bandwidth_floor_ms"]) and positive(rec["floor"]["bytes_per_step"])
    jg = rec["jaxgen"]
    for field in ("tok_s", "time_s", "ttft_s", "decode_step_ms", "bandwidth_floor_pct", "floor_pct"):
        assert positive(jg[field]), (field, jg[field])
    assert math.isfinite(jg["compile_s"]) and jg["compile_s"] >= 0
    assert rec["recompiles_during_rounds"] == 0
    if res["transformers"]:  # torch is installed in the test environment, so this side normally runs
        for field in ("tok_s", "ttft_s", "decode_step_ms", "bandwidth_floor_pct"):
            assert positive(rec["transformers"][field]), (field, rec["transformers"][field])
        assert positive(rec["ratio"])


def test_bench_rejects_unknown_mode(capsys):
    assert main(["bench", "--modes", "greedy,nucleus"]) == 2
    assert "nucleus" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--smoke"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["smoke"] and not res["skipped"]
    s = res["sections"]
    assert positive(s["floor"]["jax_copy_GBps"])
    assert [g["batch"] for g in s["greedy"]] == [1, 4]
    for g in s["greedy"]:
        for field in ("tok_s", "decode_tok_s", "step_ms", "ttft_ms", "read_GBps", "pct_of_copy_bw"):
            assert positive(g[field]), (field, g[field])
        assert g["recompiles_in_rounds"] == 0
    for field in ("fori_step_us", "while_step_us", "while_cond_step_us"):
        assert positive(s["loop_sync"][field])
    assert s["loop_sync"]["same_tokens"]
    assert s["layout"]["same_tokens"] and positive(s["layout"]["scan_time_vs_unrolled"])
    assert "batch" in p.stdout and "loop sync" in p.stdout
