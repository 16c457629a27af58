"""Child processes: one framework alone -> compile time (first call - second call) and peak RSS per mode.

The parent runs ``SCRIPT --_probe jaxgen|hf ...`` (the benchmark script's hidden flags) and reads one
``PROBE_JSON {...}`` line from its stdout.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from harness.env import CompileEvents, configure_jax_cache, log, peak_rss_sampler, rss_bytes, set_jax_env
from harness.models import mode_prompts, mode_settings, prompts


def probe_main(args) -> None:
    """Child side: time each mode's first and second call in a fresh process, sampling RSS meanwhile."""
    set_jax_env(args.device, args.probe_cache)
    from jaxgen.bench.runners import HFRunner, JaxgenRunner

    dtype = "float32" if args.device == "cpu" else "bfloat16"
    out = dict(framework=args.probe, modes={})
    if args.probe == "jaxgen":
        configure_jax_cache(args.probe_cache)
        events = CompileEvents()
        runner = JaxgenRunner(args.probe_model, dtype)
    else:
        events = None
        runner = HFRunner(args.probe_model, dtype, "cpu" if args.device == "cpu" else "cuda")
    out["load_s"] = runner.load_s
    out["rss_after_load_MiB"] = rss_bytes() / 2 ** 20
    all_prompts = prompts(args.probe_model, runner.vocab, runner.pad)
    for mode in args.probe_modes.split(","):
        ids, mask = mode_prompts(all_prompts, mode)
        settings = mode_settings(mode)
        with peak_rss_sampler() as peak:
            before = events.snapshot() if events else None
            c0 = time.process_time()
            first, _ = runner.call(settings, ids, mask, args.probe_n)
            c1 = time.process_time()
            after = events.snapshot() if events else None
            second, _ = runner.call(settings, ids, mask, args.probe_n)
            c2 = time.process_time()
        # Compile = first call - second call (wall: what a user waits; CPU: robust to other load, but counts
        # XLA's parallel codegen threads, so it can exceed the wall time on 2 cores).
        rec = dict(first_call_s=first, second_call_s=second, compile_s=max(0.0, first - second),
                   compile_cpu_s=max(0.0, (c1 - c0) - (c2 - c1)), peak_rss_MiB=peak["peak"] / 2 ** 20)
        if events:
            rec["events"] = CompileEvents.diff(before, after)
        out["modes"][mode] = rec
    out["max_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("PROBE_JSON " + json.dumps(out))


def run_probe(script: str, framework: str, model_path: str, modes, n: int, device: str, cache_dir: str | None,
              timeout: float = 1800) -> dict | None:
    """Parent side: run ``script``'s probe in a fresh process; None (with its stderr logged) if it failed."""
    cmd = [sys.executable, script, "--_probe", framework, "--_probe-model", model_path,
           "--_probe-modes", ",".join(modes), "--_probe-n", str(n), "--device", device]
    if cache_dir:
        cmd += ["--_probe-cache", cache_dir]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    for line in p.stdout.splitlines():
        if line.startswith("PROBE_JSON "):
            res = json.loads(line[len("PROBE_JSON "):])
            res["process_wall_s"] = wall
            return res
    log(f"probe {framework} {model_path} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return None
