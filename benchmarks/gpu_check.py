#!/usr/bin/env python
"""jaxgen's decode speed on one GPU: a Llama-3-8B-shaped model with random bfloat16 weights made on the device.

    pip install --no-deps -e . && python benchmarks/gpu_check.py     # one H200: a few minutes, at most ~8
    python benchmarks/gpu_check.py --smoke                           # tiny shapes on any backend (the CPU test)

Nothing is downloaded and torch is not used. Sections, in order, each saved to ``$OUT/gpu_check.json``
(``OUT`` defaults to ./gpu_results) as soon as it is done, so a run cut short keeps what it measured; one
that would start after ``--budget-s`` is skipped and says so:

1. ``floor``: device-to-device copy bandwidth (a jitted ``x + 1`` over 2 GiB, read + write bytes counted), a
   read-only reduction, the bfloat16 matmul rate.
2. ``greedy``: ``jaxgen.generate`` at batch 1, 16, 64, 256 (prompt 128, 128 new tokens, EOS off): compile time
   (first call - warm call), end-to-end tok/s, the decode step from t(128) - t(65) (both in the 128-token
   bucket, so one compiled program), TTFT derived from it, and ``pct_of_copy_bw`` = bytes a step must read
   (weights + the KV cache's valid slots) / step time / copy bandwidth.
3. ``loop_sync``: the same step under ``lax.fori_loop`` (static trip count) vs ``lax.while_loop`` vs
   ``while_loop`` + ``lax.cond`` (jaxgen's loop), on the first ``--sync-layers`` layers of the model (a short
   step, so per-step host round trips show), batch 1; see ``harness/loops.py``.
4. ``layout``: jaxgen's model has per-layer weights only, so unrolled vs ``lax.scan``-stacked layers are
   measured with ``layer_layout_probe.py``'s minimal decoder over the same weights (batch 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
for p in (os.path.dirname(HERE), HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, a few tokens: checks the script anywhere")
    ap.add_argument("--out", default=None, help="output folder (default $OUT, else ./gpu_results)")
    ap.add_argument("--batch-sizes", default=None, help="default 1,16,64,256 (smoke: 1,4)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 128 (smoke: 16)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128 (smoke: 16)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per figure (default 3; smoke 2)")
    ap.add_argument("--sync-layers", type=int, default=2, help="layers of the loop-sync probe's model")
    ap.add_argument("--budget-s", type=float, default=360.0,
                    help="start no section after this many seconds (default 360: with the last section's own "
                         "time, fits an 8-minute slot)")
    ap.add_argument("--sections", default="floor,greedy,loop_sync,layout")
    args = ap.parse_args()
    s = args.smoke
    args.out = args.out or os.environ.get("OUT") or "gpu_results"
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,4" if s else "1,16,64,256")).split(",")]
    args.prompt_len = args.prompt_len or (16 if s else 128)
    args.new_tokens = args.new_tokens or (16 if s else 128)
    args.rounds = args.rounds or (2 if s else 3)
    args.sections = args.sections.split(",")
    return args


def make_config(dims: dict, layers: int | None = None):
    """A ``ModelConfig`` parsed from the config.json a Llama-3-8B checkpoint would have (the public parse path,
    so the check follows any change in how jaxgen represents a family)."""
    from jaxgen.config import ModelConfig

    raw = dict(dims, num_hidden_layers=layers or dims["num_hidden_layers"], model_type="llama",
               architectures=["LlamaForCausalLM"], hidden_act="silu", rms_norm_eps=1e-5,
               max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
               bos_token_id=1, eos_token_id=None, pad_token_id=0)  # Llama 3 (not 3.1): plain RoPE; EOS off
    return ModelConfig.from_hf_dict(raw, "gpu_check")


def random_arrays(config, dtype) -> dict:
    """Every parameter generated on the default device (no host copy): normal(0, 0.02), norms 1."""
    import jax
    import jax.numpy as jnp

    from jaxgen.model import param_shapes

    normal = jax.jit(lambda key, shape: 0.02 * jax.random.normal(key, shape, dtype), static_argnums=1)
    key = jax.random.key(0)
    out = {}
    for i, (name, shape) in enumerate(sorted(param_shapes(config).items())):
        out[name] = (jnp.ones(shape, dtype) if name.endswith("norm.weight")
                     else normal(jax.random.fold_in(key, i), shape))
    return jax.block_until_ready(out)


def greedy_point(model, batch: int, args, floor: dict) -> dict:
    """One batch size: compile, then alternating rounds of N and N//2 + 1 new tokens (one program)."""
    import jax
    import numpy as np

    import jaxgen
    from jaxgen.api.generate import bucket
    from jaxgen.bench import measure as M

    n, p = args.new_tokens, args.prompt_len
    n_short = n // 2 + 1
    assert bucket(n_short) == bucket(n), "the two lengths must share one compiled program"
    rng = np.random.default_rng(batch)
    ids = rng.integers(1, model.config.vocab_size, size=(batch, p)).astype(np.int32)
    mask = np.ones_like(ids)

    def call(k: int) -> float:
        t = time.perf_counter()
        out = jaxgen.generate(model, ids, mask, max_new_tokens=k, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        jax.block_until_ready(out.sequences)
        dt = time.perf_counter() - t
        assert (np.asarray(out.num_generated) == k).all()
        return dt

    first = call(n)
    compiles = jaxgen.compile_count()
    times = M.timed_rounds({"full": lambda: call(n), "short": lambda: call(n_short)}, args.rounds)
    t, ts = M.median(times["full"]), M.median(times["short"])
    step, ttft = M.step_times(t, ts, n, n_short)
    weights = M.param_bytes(model)["per_step"]
    kv = M.kv_bytes(model.config, batch, p + (n + 1) / 2, np.dtype(model.dtype).itemsize)
    read_GBps = (weights + kv) / step / 1e9
    return dict(batch=batch, prompt_len=p, new_tokens=n, compile_s=max(first - t, 0.0), first_call_s=first,
                time_s=t, tok_s=batch * n / t, decode_tok_s=batch / step, step_ms=step * 1e3, ttft_ms=ttft * 1e3,
                weight_bytes=weights, kv_bytes=int(kv), read_GBps=read_GBps,
                pct_of_copy_bw=100 * read_GBps / floor["jax_copy_GBps"],
                pct_of_read_bw=100 * read_GBps / floor["jax_read_GBps"],
                recompiles_in_rounds=jaxgen.compile_count() - compiles, times_s=times)


def layout_point(model, args) -> dict:
    """Unrolled vs scanned layers via layer_layout_probe's decoder (batch 1, the same prompt for both)."""
    import jax
    import numpy as np

    from jaxgen.bench.measure import median, timed_rounds
    from layer_layout_probe import generate, weights

    c = model.config
    cfg = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps, c.rope.theta)
    n = args.new_tokens
    ids = np.random.default_rng(1).integers(1, c.vocab_size, size=(1, args.prompt_len)).astype(np.int32)
    res, progs, toks = {}, {}, {}
    for layout in ("unrolled", "scan"):
        w = weights(model, layout)  # "scan" stacks the layers: a second copy of them for the duration
        t = time.perf_counter()
        compiled = generate.lower(w, ids, cfg, n, layout).compile()
        res[layout] = dict(compile_s=time.perf_counter() - t)
        toks[layout] = np.asarray(jax.block_until_ready(compiled(w, ids)))
        progs[layout] = (compiled, w)

    def timed(layout):
        compiled, w = progs[layout]
        t = time.perf_counter()
        jax.block_until_ready(compiled(w, ids))
        return time.perf_counter() - t

    times = timed_rounds({k: (lambda k=k: timed(k)) for k in progs}, args.rounds)
    for layout, ts in times.items():
        res[layout].update(time_s=median(ts), tok_s=n / median(ts), times_s=ts)
    res["scan_time_vs_unrolled"] = res["scan"]["time_s"] / res["unrolled"]["time_s"]
    res["same_tokens"] = bool((toks["unrolled"] == toks["scan"]).all())
    res["note"] = "times include the 1-row prefill; jaxgen's own model is per-layer (unrolled) only"
    return res


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    if not args.smoke:
        # The 8B weights, a 256-row KV cache and the scanned copy of the layers must fit at once.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join("/tmp", "jaxgen-gpu-check-cache"))
    import jax
    import jax.numpy as jnp

    from harness.env import CompileEvents
    from harness.loops import loop_sync_probe
    from jaxgen.bench import measure as M
    from jaxgen.model import model_from_arrays

    events = CompileEvents()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    dims = TINY if args.smoke else LLAMA3_8B
    dtype = jnp.bfloat16
    res = dict(smoke=args.smoke, device=M.device_info(), versions=M.versions(), model=dict(dims), dtype="bfloat16",
               settings=dict(batch_sizes=args.batch_sizes, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                             rounds=args.rounds, sync_layers=args.sync_layers, budget_s=args.budget_s,
                             compilation_cache=os.environ["JAX_COMPILATION_CACHE_DIR"],
                             xla_flags=os.environ.get("XLA_FLAGS", "")),
               skipped=[], sections={})

    def save() -> None:
        res["wall_s"] = time.perf_counter() - started
        res["compile_events"] = CompileEvents.diff(({}, {}), events.snapshot())
        stats = jax.devices()[0].memory_stats() or {}  # None on CPU; on GPU peak_bytes_in_use shows the headroom
        res["memory_stats"] = {k: v for k, v in stats.items() if k in ("bytes_limit", "peak_bytes_in_use")}
        with open(path + ".tmp", "w") as f:
            json.dump(res, f, indent=1, default=float)
        os.replace(path + ".tmp", path)

    def in_budget(what: str) -> bool:
        if time.perf_counter() - started < args.budget_s:
            print(f"[{time.perf_counter() - started:6.1f} s] {what}", file=sys.stderr, flush=True)
            return True
        res["skipped"].append(what)
        return False

    floor = None
    if "floor" in args.sections and in_budget("floor"):
        floor = M.measure_floor("cpu" if args.smoke else "accelerator", nbytes=32 * 2 ** 20 if args.smoke else None)
        res["sections"]["floor"] = floor
        save()
    t = time.perf_counter()
    config = make_config(dims)
    arrays = random_arrays(config, dtype)
    model = model_from_arrays(config, arrays, dtype=dtype, source="random")
    res["model"].update(num_params=model.num_params(), weight_bytes=M.param_bytes(model)["total"],
                        init_s=time.perf_counter() - t)
    if "greedy" in args.sections and floor is not None:
        res["sections"]["greedy"] = []
        for b in args.batch_sizes:
            if in_budget(f"greedy batch {b}"):
                res["sections"]["greedy"].append(greedy_point(model, b, args, floor))
                save()
    if "loop_sync" in args.sections and in_budget("loop_sync"):
        small = make_config(dims, layers=min(args.sync_layers, dims["num_hidden_layers"]))
        keep = {k: v for k, v in arrays.items() if not k.startswith("model.layers.")
                or int(k.split(".")[2]) < small.num_hidden_layers}  # the big model's own arrays: no new memory
        sync = loop_sync_probe(model_from_arrays(small, keep, dtype=dtype, source="random"), 1, args.new_tokens,
                               args.rounds + 2)
        sync["layers"] = small.num_hidden_layers
        res["sections"]["loop_sync"] = sync
        save()
    if "layout" in args.sections and in_budget("layout"):
        res["sections"]["layout"] = layout_point(model, args)
        save()
    save()
    print_table(res)
    print(f"json: {path}", file=sys.stderr)


def print_table(res: dict) -> None:
    s = res["sections"]
    dev = res["device"]
    n = res["model"]["num_params"]
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
    print(f"{dev['name']} ({dev['jax_platform']}), {size} params bf16, "
          f"{res['wall_s']:.0f} s" + (f"; skipped: {', '.join(res['skipped'])}" if res["skipped"] else ""))
    if "floor" in s:
        f = s["floor"]
        print(f"copy bandwidth {f['jax_copy_GBps']:.0f} GB/s, read {f['jax_read_GBps']:.0f} GB/s, "
              f"matmul {f['matmul_GFLOPs'] / 1e3:.0f} TFLOP/s")
    if s.get("greedy"):
        print(f"{'batch':>5} {'tok/s':>9} {'decode tok/s':>12} {'step ms':>8} {'TTFT ms':>8} {'compile s':>9} "
              f"{'GB/s':>7} {'% copy bw':>9}")
        for g in s["greedy"]:
            print(f"{g['batch']:>5} {g['tok_s']:>9.1f} {g['decode_tok_s']:>12.1f} {g['step_ms']:>8.2f} "
                  f"{g['ttft_ms']:>8.1f} {g['compile_s']:>9.1f} {g['read_GBps']:>7.0f} {g['pct_of_copy_bw']:>9.1f}")
    if "loop_sync" in s:
        ls = s["loop_sync"]
        print(f"loop sync ({ls['layers']} layers, batch 1): step us fori {ls['fori_step_us']:.1f}, while "
              f"{ls['while_step_us']:.1f}, while+cond {ls['while_cond_step_us']:.1f} -> while costs "
              f"{ls['while_minus_fori_us']:+.1f} us, cond {ls['cond_minus_while_us']:+.1f} us per step")
    if "layout" in s:
        lo = s["layout"]
        print(f"layout (batch 1): unrolled {lo['unrolled']['tok_s']:.1f} tok/s, compile "
              f"{lo['unrolled']['compile_s']:.1f} s; scan {lo['scan']['tok_s']:.1f} tok/s, compile "
              f"{lo['scan']['compile_s']:.1f} s; scan time {lo['scan_time_vs_unrolled']:.2f}x, "
              f"same tokens {lo['same_tokens']}")


if __name__ == "__main__":
    main()
