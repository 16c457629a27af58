#!/usr/bin/env python
"""jaxgen vs transformers generation, side by side in one run, against the machine's physical floor.

    python benchmarks/bench_generate.py                  # full run (CPU, float32), ~15 min on 2 cores
    python benchmarks/bench_generate.py --quick          # spot check, < 5 min on 2 cores
    python benchmarks/bench_generate.py --device gpu     # the same on an accelerator, in bfloat16
    python benchmarks/bench_generate.py --flax-python VENV/bin/python   # + old transformers-Flax (its own venv)

Models: random Llamas of ~5M and ~125M parameters built with transformers and saved with ``save_pretrained``
(both frameworks load the same folder, so the weights are identical), plus the bundled demo model when present;
``--models families`` adds GPT-2 124M and a Gemma-2-shaped model, ``--models moe`` Mixtral- and Qwen3-MoE-shaped
ones (whose floor counts only the experts a step reads).
EOS is disabled on both sides, so every run generates exactly ``max_new_tokens`` tokens (checked).

Per model and mode (greedy b1, greedy b8 left-padded, sampling b1, beam-4 b1, greedy + top_logprobs=5 b1):
tokens/s (median of ``--runs`` timed runs after warm-up, the frameworks alternating within one process so that
load from other processes hits them alike), time to first token (a ``max_new_tokens=1`` call), decode time per
step ((t(N) - t(1)) / (N - 1)), compile time cold (fresh process, empty persistent cache) and warm (fresh
process, persistent cache filled), peak RSS of each framework alone (separate processes), and the ratio. Ratios
are medians of per-round ratios (transformers time / jaxgen time of the same round).

The floor, measured in the same run: memory bandwidth (large array copies) -> the shortest possible decode step
(bytes of weights + KV cache read per token / bandwidth); matmul FLOP rate -> the shortest batched step.

Output: a table on stdout, a JSON file (``--out``) with device, versions and settings, and a PNG chart.
Shared code: ``jaxgen.bench`` (floor, timing, runners) and ``benchmarks/harness`` (models, probes, report).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from harness.env import CompileEvents, configure_jax_cache, log, set_jax_env  # noqa: E402
from harness.models import (DEMO_NAME, INITIALIZER_RANGE, MODEL_GROUPS, MODEL_SPECS, MODES,  # noqa: E402
                            build_random_model, demo_model_path, expand_models, mode_prompts, mode_settings,
                            prompts)


def bench_model(name: str, path: str, args, floor: dict, cache_dir: str) -> dict:
    """All modes for one model. ``cache_dir``: the persistent compilation cache this process uses; the cold
    probe gets it before any of this model's programs are in it, the warm probe and this process after."""
    import numpy as np
    from tqdm import tqdm

    from harness.probes import run_probe
    from jaxgen.bench import measure as M
    from jaxgen.bench.runners import HFRunner, JaxgenRunner

    n, modes = args.max_new_tokens, args.modes
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    res = dict(name=name, path=path if name == DEMO_NAME else None, modes={})

    # --- child processes: compile cold / warm and peak RSS, each framework alone.
    probes = {}
    if not args.no_probes:
        script = os.path.abspath(__file__)
        log(f"[{name}] probes: jaxgen cold compile (fresh process, none of its programs cached)")
        probes["jaxgen_cold"] = run_probe(script, "jaxgen", path, modes, n, args.device, cache_dir)
        log(f"[{name}] probes: jaxgen warm compile (fresh process, persistent cache filled)")
        warm_modes = modes[:1] if args.quick else modes  # --quick: one warm figure is enough for a spot check
        probes["jaxgen_warm"] = run_probe(script, "jaxgen", path, warm_modes, n, args.device, cache_dir)
        if not args.no_hf and not args.quick:
            log(f"[{name}] probes: transformers alone (peak RSS)")
            probes["hf"] = run_probe(script, "hf", path, modes, n, args.device, None)
    res["probes"] = probes

    # --- this process: every framework, alternating.
    jg = JaxgenRunner(path, dtype)
    hf = None if args.no_hf else HFRunner(path, dtype, "cpu" if args.device == "cpu" else "cuda")
    fx = None
    with open(os.path.join(path, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if args.flax_python and model_type != "llama":
        log(f"[{name}] transformers-Flax: only its Llama runner exists here; skipped for {model_type}")
    elif args.flax_python:
        from harness.hf_flax import FlaxRunner

        fx = FlaxRunner(args.flax_python, path, dtype)
        res["transformers_flax_versions"] = fx.versions
    cfg = jg.model.config
    res["config"] = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                         num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                         intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
                         tie_word_embeddings=cfg.tie_word_embeddings, num_params=jg.model.num_params(),
                         model_type=cfg.model_type, active_params_b1=M.matmul_params(jg.model, 1))
    res["load_s"] = dict(jaxgen=jg.load_s, transformers=hf.load_s if hf else None)
    if fx:
        res["load_s"]["transformers_flax"] = fx.load_s
    pbytes = M.param_bytes(jg.model)
    res["param_bytes"] = pbytes
    all_prompts = prompts(path, jg.vocab, jg.pad)
    if hf is not None and hf.pad != jg.pad:
        log(f"[{name}] warning: pad ids differ (jaxgen {jg.pad}, transformers {hf.pad})")
    kv_item = 4 if dtype == "float32" else 2
    events = CompileEvents()

    for mode in modes:
        ids, mask = mode_prompts(all_prompts, mode)
        settings = mode_settings(mode)
        rows = ids.shape[0] * settings.get("num_beams", 1)
        rec = dict(batch=int(ids.shape[0]), rows=rows, max_new_tokens=n, prompt_lengths=mask.sum(1).tolist(),
                   settings=settings)
        log(f"[{name}] {mode}: warm-up")
        before = events.snapshot()
        t0 = time.perf_counter()
        jg_first, jg_tokens = jg.call(settings, ids, mask, n)
        rec["jaxgen_first_call_s"] = jg_first
        rec["jaxgen_first_call_events"] = CompileEvents.diff(before, events.snapshot())
        jg.call(settings, ids, mask, 1)  # compile the TTFT program (a different output bucket)
        others = {"hf": hf, "flax": fx if fx is not None and fx.supports(settings) else None}
        for key, runner in others.items():
            if runner is None:
                continue
            _, tokens = runner.call(settings, ids, mask, n)
            runner.call(settings, ids, mask, 1)
            if mode != "sample_b1":  # sampled tokens differ by design (different random streams)
                suffix = "" if key == "hf" else "_flax"
                rec["tokens_match_fraction" + suffix] = float((jg_tokens == tokens).mean())
                rec["first_divergence" + suffix] = [int(np.argmax(r != h)) if (r != h).any() else None
                                                    for r, h in zip(jg_tokens, tokens)]
        rec["warmup_wall_s"] = time.perf_counter() - t0

        fns = {"jaxgen": lambda: jg.call(settings, ids, mask, n)[0],
               "jaxgen_ttft": lambda: jg.call(settings, ids, mask, 1)[0]}
        if mode == "logprobs5_b1":
            fns["jaxgen_no_lp"] = lambda: jg.call({}, ids, mask, n)[0]
        for key, runner in others.items():
            if runner is not None:
                fns[key] = lambda runner=runner: runner.call(settings, ids, mask, n)[0]
                fns[key + "_ttft"] = lambda runner=runner: runner.call(settings, ids, mask, 1)[0]
        load0 = os.getloadavg()[0]
        # disable=None: no bar when stderr is not a terminal (a log file gets no carriage-return spam)
        with tqdm(total=args.runs * len(fns), desc=f"{name} {mode}", unit="call", leave=False,
                  disable=None) as bar:
            times = M.timed_rounds(fns, args.runs, bar)
        rec["loadavg_1min"] = [load0, os.getloadavg()[0]]
        rec["times_s"] = times
        new_tokens = ids.shape[0] * n
        for fw, key in (("jaxgen", "jaxgen"), ("transformers", "hf"), ("transformers_flax", "flax")):
            if key not in times:
                continue
            t, t1 = M.median(times[key]), M.median(times[key + "_ttft"])
            rec[fw] = dict(tok_s=new_tokens / t, time_s=t, ttft_s=t1,
                           decode_step_ms=(t - t1) / (n - 1) * 1e3 if n > 1 else None)
        if hf is not None:
            rec["ratio"] = M.paired_ratio(times["hf"], times["jaxgen"])
            rec["ratio_ttft"] = M.paired_ratio(times["hf_ttft"], times["jaxgen_ttft"])
            rec["ratio_decode_step"] = rec["transformers"]["decode_step_ms"] / rec["jaxgen"]["decode_step_ms"]
        if "flax" in times:
            rec["ratio_flax"] = M.paired_ratio(times["flax"], times["jaxgen"])
        if mode == "logprobs5_b1":
            # A few % is below the round-to-round noise of 5 runs: measure the pair on more interleaved rounds.
            pairs = M.timed_rounds({"lp": fns["jaxgen"], "no_lp": fns["jaxgen_no_lp"]},
                                   max(10, 2 * args.runs) if args.quick else max(15, 3 * args.runs))
            rec["lp_pair_times_s"] = pairs
            rec["lp_overhead_pct"] = (M.paired_ratio(pairs["lp"], pairs["no_lp"]) - 1) * 100
        mean_ctx = float(np.mean(mask.sum(1))) + (n + 1) / 2
        fl = M.step_floor(M.param_bytes(jg.model, rows), cfg, rows, mean_ctx, kv_item, floor,
                          M.matmul_params(jg.model, rows))
        step = rec["jaxgen"]["decode_step_ms"]
        fl["floor_pct"] = 100 * fl["floor_ms"] / step if step else None
        fl["bandwidth_floor_pct"] = 100 * fl["bandwidth_floor_ms"] / step if step else None
        if hf is not None and rec["transformers"]["decode_step_ms"]:
            fl["transformers_floor_pct"] = 100 * fl["floor_ms"] / rec["transformers"]["decode_step_ms"]
        rec["floor"] = fl
        res["modes"][mode] = rec
    if fx is not None:
        fx.close()
    res["recompile_checks"] = recompile_checks(jg, all_prompts, modes, n)
    res["recompiles"] = sum(c["new_compiles"] for c in res["recompile_checks"])
    return res


def recompile_checks(jg, all_prompts: dict, modes, n: int) -> list:
    """Calls that must reuse a compiled program: same buckets, other prompt length / sampling values / N."""
    ids, mask = all_prompts["b1"]
    other = max(1, ids.shape[1] - 7)  # 25 tokens: same 32-token bucket
    short = (ids[:, -other:], mask[:, -other:])
    calls = []
    if "greedy_b1" in modes:
        calls.append((f"greedy_b1, prompt length {ids.shape[1]} -> {other}", "greedy_b1", *short, n, {}))
        calls.append((f"greedy_b1, max_new_tokens {n} -> {n - 3}", "greedy_b1", ids, mask, n - 3, {}))
    if "sample_b1" in modes:
        calls.append(("sampling, temperature 0.8 -> 0.6, top_p 0.9 -> 0.75, top_k 50 -> 20", "sample_b1",
                      ids, mask, n, dict(temperature=0.6, top_p=0.75, top_k=20)))
        calls.append((f"sampling, prompt length {ids.shape[1]} -> {other}", "sample_b1", *short, n, {}))
    if "beam4_b1" in modes:
        calls.append((f"beam-4, prompt length {ids.shape[1]} -> {other}", "beam4_b1", *short, n, {}))
    checks = []
    for label, mode, i2, m2, n2, extra in calls:
        before = jg.cache_size()
        jg.call(mode_settings(mode), i2, m2, n2, **extra)
        checks.append(dict(check=label, new_compiles=jg.cache_size() - before))
    return checks


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short spot check (< 5 min on 2 cores)")
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"), default="cpu",
                    help="cpu runs float32; gpu/tpu run bfloat16 (transformers on CUDA when torch has it)")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/<device>[-quick].json)")
    ap.add_argument("--chart", default=None, help="PNG chart (default: the JSON path with .png)")
    ap.add_argument("--models", default=None, help="comma list of model names (harness/models.py MODEL_SPECS), groups default / families / moe / hybrid, and demo (default: default,demo)")
    ap.add_argument("--modes", default=",".join(m for m in MODES if m != "beam3_b1"),
                    help="comma list of " + ", ".join(MODES) + " (default: all but beam3_b1)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per framework (>= 5; default 5 / 7)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="default 128 (16 with --quick: one output bucket, so the TTFT call needs no extra compile)")
    ap.add_argument("--models-dir", default=None, help="where the random models are saved (default: a temp dir)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--flax-python", default=None, metavar="PYTHON",
                    help="also time transformers-Flax (transformers < 5) with this venv's python "
                         "(see benchmarks/harness/hf_flax.py)")
    ap.add_argument("--no-probes", action="store_true", help="skip the child processes (compile cold/warm, RSS)")
    ap.add_argument("--high-priority", action="store_true",
                    help="run at nice -20 when permitted (less CPU-time interference from other processes on a "
                         "shared machine; memory-bandwidth interference remains)")
    ap.add_argument("--_probe", dest="probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_probe-model", dest="probe_model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_probe-modes", dest="probe_modes", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_probe-n", dest="probe_n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_probe-cache", dest="probe_cache", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return ap, args
    args.runs = args.runs or (5 if args.quick else 7)
    if args.runs < 5:
        ap.error("--runs must be at least 5 (medians of at least 5 timed runs)")
    args.max_new_tokens = args.max_new_tokens or (16 if args.quick else 128)
    args.modes = [m for m in args.modes.split(",") if m]
    bad = set(args.modes) - set(MODES)
    if bad:
        ap.error(f"unknown modes {sorted(bad)}")
    suffix = "-quick" if args.quick else ""
    args.out = args.out or os.path.join(HERE, "results", f"{args.device}{suffix}.json")
    args.chart = args.chart or os.path.splitext(args.out)[0] + ".png"
    return ap, args


def main() -> None:
    ap, args = parse_args()
    if args.probe:
        from harness.probes import probe_main

        return probe_main(args)
    started = time.perf_counter()
    if args.high_priority:
        try:
            os.nice(-20)  # inherited by the child probes
        except OSError:
            log("--high-priority: not permitted here, running at normal priority")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cache_dir = tempfile.mkdtemp(prefix="jaxgen-bench-main-cache-")
    set_jax_env(args.device, None)
    configure_jax_cache(cache_dir)
    from harness.report import check_targets, plot, print_table, summarize_compile
    from jaxgen.bench import measure as M
    from jaxgen.bench.runners import B8_LENGTHS, PROMPT_LEN, SAMPLING

    wanted = expand_models(args.models.split(",")) if args.models else MODEL_GROUPS["default"] + [DEMO_NAME]
    models_dir = args.models_dir or tempfile.mkdtemp(prefix="jaxgen-bench-models-")
    paths = {}
    for name in wanted:
        if name == DEMO_NAME:
            p = demo_model_path()
            if p is None:
                log("bundled demo model not found (jaxgen/demo/model): skipped")
                continue
            paths[name] = p
        elif name in MODEL_SPECS:
            log(f"building {name} in {models_dir}")
            paths[name] = build_random_model(name, models_dir)
        else:
            ap.error(f"unknown model {name}")

    log("measuring the floor (bandwidth, matmul rate)")
    floor = M.measure_floor(args.device)
    res = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=M.device_info(args.device), versions=M.versions(),
        settings=dict(quick=args.quick, runs=args.runs, max_new_tokens=args.max_new_tokens, modes=args.modes,
                      dtype="float32" if args.device == "cpu" else "bfloat16", prompt_length=PROMPT_LEN,
                      b8_prompt_lengths=list(B8_LENGTHS), sampling=SAMPLING, seed=M.SEED,
                      torch_threads=None, xla_flags=os.environ.get("XLA_FLAGS", ""), niceness=os.nice(0),
                      model_specs=MODEL_SPECS, initializer_range=INITIALIZER_RANGE, eos="disabled on both sides",
                      transformers_cache="default (DynamicCache), no torch.compile",
                      transformers_flax=bool(args.flax_python)),
        loadavg_start=os.getloadavg(), floor=floor, models=[])
    for name, path in paths.items():
        res["models"].append(bench_model(name, path, args, floor, cache_dir))
    if "torch" in sys.modules:
        res["settings"]["torch_threads"] = sys.modules["torch"].get_num_threads()
    summarize_compile(res)
    res["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - started
    print_table(res)
    res["targets"] = check_targets(res) if args.device == "cpu" else []
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    try:
        plot(res, args.chart)
        log(f"chart: {args.chart}")
    except ImportError:
        log("matplotlib is not installed: no chart (pip install 'jaxgen[bench]')")
    busy = [m["loadavg_1min"][1] for r in res["models"] for m in r["modes"].values()]
    if busy and max(busy) > (os.cpu_count() or 1):
        print(f"\nWARNING: 1-min load average reached {max(busy):.1f} on {os.cpu_count()} cores during the timed "
              "rounds: other processes competed for CPU and memory bandwidth; transformers (OpenMP) slows down "
              "far more than jaxgen under contention, so ratios from this run overstate jaxgen's lead.")
    log(f"json: {args.out}; total {res['wall_s']:.0f} s; load average at start {res['loadavg_start'][0]:.1f}, "
        f"end {res['loadavg_end'][0]:.1f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
