"""``jaxgen bench``: tokens/s of greedy, sampling and beam search, against this machine's bandwidth floor and
transformers (PyTorch) side by side when torch is installed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys

from jaxgen.cli.common import DTYPES, UserError


def add_parser(sub) -> None:
    b = sub.add_parser(
        "bench", help="tokens/s of greedy, sampling and beam search against the bandwidth floor",
        description="Time generation warm (after one compile call), median over rounds, jaxgen and transformers "
                    "alternating within each round; compare each decode step with the time the machine needs "
                    "to read the step's bytes (weights + KV cache) at the bandwidth measured in the same run.")
    b.add_argument("--model", metavar="DIR", default=None, help="checkpoint folder (default: the bundled model)")
    b.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=64, metavar="N")
    b.add_argument("--rounds", type=int, default=5, help="timed rounds per mode and batch size (default 5)")
    b.add_argument("--modes", default="greedy,sampling,beam", help="comma-separated: greedy,sampling,beam")
    b.add_argument("--batch-sizes", "--batch_sizes", dest="batch_sizes", default="1,8", help="comma-separated")
    b.add_argument("--dtype", choices=DTYPES, default=None,
                   help="compute dtype (default float32 on CPU, bfloat16 on an accelerator)")
    b.add_argument("--no-transformers", "--no_transformers", dest="no_transformers", action="store_true",
                   help="time jaxgen only, even when torch is installed")
    b.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    b.set_defaults(run=run)


def _parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise UserError(f"--{what}: expected a comma-separated list, got {text!r}.") from e
    if not items:
        raise UserError(f"--{what} is empty.")
    return items


def _transformers_side(path: str, dtype: str, platform: str):
    """``(runner or None, why not)``: transformers needs torch and a folder it can read (not a converted one)."""
    if importlib.util.find_spec("torch") is None:
        return None, "torch is not installed"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    from jaxgen.bench.runners import HFRunner

    device = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"
    try:
        return HFRunner(path, dtype, device), None
    except Exception as e:  # e.g. a folder written by `jaxgen convert`, which transformers cannot read
        return None, f"transformers cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def run(args: argparse.Namespace) -> int:
    modes = _parse_list(args.modes, "modes")
    batches = _parse_list(args.batch_sizes, "batch-sizes", int)
    from jaxgen.bench.runners import MODES

    if set(modes) - set(MODES):
        raise UserError(f"--modes: unknown {sorted(set(modes) - set(MODES))}; choose from {', '.join(MODES)}.")
    if any(b < 1 for b in batches) or args.rounds < 1 or args.max_new_tokens < 2:
        raise UserError("--batch-sizes and --rounds must be >= 1, --max-new-tokens >= 2.")
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from jaxgen.bench import measure as M
    from jaxgen.bench.runners import JaxgenRunner, batch_lengths, make_prompts
    from jaxgen.loading import BUNDLED_MODEL

    path = args.model or BUNDLED_MODEL
    if not os.path.isdir(path):
        raise UserError(f"model folder {path} does not exist.")
    platform = jax.devices()[0].platform
    dtype = args.dtype or ("float32" if platform == "cpu" else "bfloat16")
    jg = JaxgenRunner(path, dtype)
    hf, hf_note = (None, "--no-transformers") if args.no_transformers else _transformers_side(path, dtype, platform)
    floor = M.measure_floor()
    pbytes = M.param_bytes(jg.model)
    cfg, n = jg.model.config, args.max_new_tokens
    itemsize = np.dtype(jg.model.dtype).itemsize
    res = dict(model=path, dtype=dtype, max_new_tokens=n, rounds=args.rounds, device=M.device_info(),
               versions=M.versions(), floor=floor, param_bytes=pbytes, num_params=jg.model.num_params(),
               transformers=hf is not None, transformers_note=hf_note,
               # The CLI turns JAX's persistent cache on: compile_s is a cold compile only when it was empty.
               compilation_cache=jax.config.jax_compilation_cache_dir or None, results=[])
    calls = len(modes) * len(batches) * (args.rounds + 1) * (4 if hf else 2)
    bar = tqdm(total=calls, desc="jaxgen bench", unit="call", file=sys.stderr, disable=None, leave=False)
    for mode in modes:
        settings = MODES[mode]
        for batch in batches:
            ids, mask = make_prompts(path, jg.vocab, jg.pad, batch_lengths(batch))
            bar.set_postfix_str(f"{mode} b{batch}")
            first = jg.call(settings, ids, mask, n)[0]  # compiles
            jg.call(settings, ids, mask, 1)  # the TTFT call may use another output bucket: compile it too
            fns = {"jaxgen": lambda: jg.call(settings, ids, mask, n)[0],
                   "jaxgen_ttft": lambda: jg.call(settings, ids, mask, 1)[0]}
            if hf is not None:
                hf.call(settings, ids, mask, n), hf.call(settings, ids, mask, 1)
                fns.update(hf=lambda: hf.call(settings, ids, mask, n)[0],
                           hf_ttft=lambda: hf.call(settings, ids, mask, 1)[0])
            bar.update(len(fns))
            compiles = jg.cache_size()
            times = M.timed_rounds(fns, args.rounds, bar)
            rows = batch * settings.get("num_beams", 1)
            mean_ctx = float(mask.sum(1).mean()) + (n + 1) / 2
            fl = M.step_floor(M.param_bytes(jg.model, rows), cfg, rows, mean_ctx, itemsize, floor,
                              M.matmul_params(jg.model, rows))
            rec = dict(mode=mode, batch=batch, rows=rows, prompt_lengths=mask.sum(1).tolist(), floor=fl,
                       recompiles_during_rounds=jg.cache_size() - compiles, times_s=times)
            for side, key in (("jaxgen", "jaxgen"), ("transformers", "hf")):
                if key not in times:
                    rec[side] = None
                    continue
                t, t1 = M.median(times[key]), M.median(times[key + "_ttft"])
                step, _ = M.step_times(t, t1, n, 1)
                rec[side] = dict(tok_s=batch * n / t, time_s=t, ttft_s=t1, decode_step_ms=step * 1e3,
                                 bandwidth_floor_pct=100 * fl["bandwidth_floor_ms"] / (step * 1e3),
                                 floor_pct=100 * fl["floor_ms"] / (step * 1e3))
            rec["jaxgen"]["compile_s"] = max(first - rec["jaxgen"]["time_s"], 0.0)
            rec["ratio"] = M.paired_ratio(times["hf"], times["jaxgen"]) if hf else None
            rec["ratio_ttft"] = M.paired_ratio(times["hf_ttft"], times["jaxgen_ttft"]) if hf else None
            res["results"].append(rec)
    bar.close()
    if args.json:
        print(json.dumps(res, default=float))
    else:
        _print_table(res)
    return 0


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _print_table(res: dict) -> None:
    f, dev, pb = res["floor"], res["device"], res["param_bytes"]
    print(f"{res['model']}: {res['num_params'] / 1e6:.1f}M parameters, {res['dtype']}, on {dev['name']} "
          f"({dev['cores']} cores); {res['max_new_tokens']} new tokens, median of {res['rounds']} rounds")
    print(f"floor: read bandwidth {f['bandwidth_GBps']:.1f} GB/s, matmul {f['matmul_GFLOPs']:.0f} GFLOP/s; "
          f"a step reads {pb['per_step'] / 1e6:.1f} MB of weights plus the KV cache")
    if res.get("compilation_cache"):
        print(f"compile s: with the persistent cache {res['compilation_cache']} (JAXGEN_COMPILATION_CACHE=off: cold)")
    if not res["transformers"]:
        print(f"transformers: not run ({res['transformers_note']})")
    hdr = (f"{'mode':<9} {'batch':>5} {'jaxgen tok/s':>12} {'HF tok/s':>9} {'ratio':>6} {'TTFT ms jg/HF':>14} "
           f"{'step ms jg/HF':>14} {'compile s':>9} {'% bw floor jg/HF':>17}")
    print(hdr)
    print("-" * len(hdr))
    for r in res["results"]:
        j, h = r["jaxgen"], r["transformers"] or {}
        ms = lambda d, k: _fmt(d.get(k) * 1e3 if d.get(k) is not None else None)
        print(f"{r['mode']:<9} {r['batch']:>5} {j['tok_s']:>12.1f} {_fmt(h.get('tok_s')):>9} "
              f"{_fmt(r['ratio'], '.2f'):>6} {ms(j, 'ttft_s') + '/' + ms(h, 'ttft_s'):>14} "
              f"{_fmt(j['decode_step_ms'], '.2f') + '/' + _fmt(h.get('decode_step_ms'), '.2f'):>14} "
              f"{j['compile_s']:>9.2f} "
              f"{_fmt(j['bandwidth_floor_pct'], '.0f') + '/' + _fmt(h.get('bandwidth_floor_pct'), '.0f'):>17}")
