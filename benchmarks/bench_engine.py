#!/usr/bin/env python
"""Many prompts at once: ``jaxgen.Engine`` (continuous batching) vs ``jaxgen.generate`` and transformers'
``generate`` over fixed batches, on an RL-rollout-like workload.

    python benchmarks/bench_engine.py            # 256 prompts
    python benchmarks/bench_engine.py --quick    # 32 prompts, a spot check (a few minutes on 2 cores)
    python benchmarks/bench_engine.py --model llama-125m   # a benchmark model (benchmarks/harness/models.py)

Workload (seed 0): prompts of 8-240 tokens cut from the bundled model's held-out text, ``max_new_tokens`` 16-256
(capped so prompt + new <= 256, the model's context), sampling (temperature 0.8, top-p 0.95, the model's top-k 50,
its EOS on), ``num_return_sequences=4``, one key per prompt. The bundled demo model (3.2M), float32, or with
``--model`` one of the benchmark's random models (saved with transformers on first use; no EOS, so every row runs
to its own ``max_new_tokens``).

- engine: ``Engine(model, max_slots=32)`` (``--schedule``: longest_first, its default, or fifo); a first pass
  compiles the programs the workload needs (their trace + lower + compile time is reported), then the same
  workload is timed through ``stream`` (time to the first finished request from there);
- jaxgen.generate / transformers: fixed batches of 8 prompts x 4 samples = 32 rows (the engine's slot count), in
  workload order, each batch with its largest ``max_new_tokens`` (a request's tokens past its own limit are cut
  and not counted). jaxgen's time leaves out its compile time (trace + lower + compile events of the first pass).
  ``--baseline-batches K`` times only K of the batches, evenly spread over the workload (for the 125M model,
  where the full fixed-batch runs take over an hour); their rate stands for the whole workload's.

Reported per system: useful tokens/s (each request's tokens up to its own limit or EOS), the share of useful
decode slot-steps (useful tokens / rows x steps run), time to the first finished request, peak RSS (each system
in its own process; psutil polling, else ``resource.getrusage``), compile time. Each system runs in its own
child process (``--system``); the parent prints a table and writes ``--out`` JSON. On a shared machine the
numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SYSTEMS = ("engine", "jaxgen", "transformers")
CONTEXT = 256
SLOTS = 32
SAMPLES = 4


def workload(n: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """``n`` prompts (held-out text windows, 8-240 tokens) and their max_new_tokens (16-256, prompt + new <= 256)."""
    import numpy as np

    text = np.load(os.path.join(ROOT, "jaxgen", "demo", "model", "heldout_sample.npy")).astype(np.int64)
    rng = np.random.default_rng(seed)
    prompts, new = [], []
    for _ in range(n):
        length = int(rng.integers(8, CONTEXT - 16 + 1))
        at = int(rng.integers(0, len(text) - length))
        prompts.append([int(x) for x in text[at:at + length]])
        new.append(min(int(rng.integers(16, 257)), CONTEXT - length))
    return prompts, new


class PeakRSS:
    """Peak resident memory of this process: psutil polling when installed, else ru_maxrss."""

    def __init__(self):
        self.peak = 0
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
        self._stop = threading.Event()
        if self._proc is not None:
            threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def result(self) -> dict:
        import resource

        self._stop.set()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return dict(peak_rss_mib=round(max(self.peak, 0 if self._proc else maxrss) / 2**20, 1),
                    ru_maxrss_mib=round(maxrss / 2**20, 1), source="psutil" if self._proc else "getrusage")


def useful(num_generated, limit: int) -> int:
    return int(sum(min(int(g), limit) for g in num_generated))


class CompileTime:
    """Seconds jax spends tracing, lowering and compiling (from its monitoring events)."""

    EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration")

    def __init__(self):
        import jax.monitoring

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kw):
        if event in self.EVENTS:
            self.seconds += duration


def model_path(args) -> str:
    """The folder of ``--model``: the bundled model, or a random benchmark model (built once, then reused)."""
    if args.model == "demo":
        return os.path.join(ROOT, "jaxgen", "demo", "model")
    sys.path.insert(0, HERE)
    from harness.models import build_random_model

    return build_random_model(args.model, args.model_dir)


def sampling_config(model):
    from jaxgen.api.generate import default_generation_config

    return default_generation_config(model).replace(do_sample=True, temperature=0.8, top_p=0.95,
                                                    num_return_sequences=SAMPLES)


def run_engine(prompts, new, args) -> dict:
    """A first pass compiles what the workload needs (timed as compile); the second, identical one is timed."""
    import jax

    import jaxgen

    compiles = CompileTime()
    model = jaxgen.load_model(model_path(args), dtype="float32")
    cfg = sampling_config(model)
    configs = [cfg.replace(max_new_tokens=m) for m in new]
    keys = list(jax.random.split(jax.random.key(0), len(prompts)))
    engine = jaxgen.Engine(model, max_slots=SLOTS, max_top_logprobs=0, schedule=args.schedule)
    t = time.perf_counter()
    engine.generate(prompts, configs, keys)
    cold = time.perf_counter() - t
    compile_s = compiles.seconds
    tokens, first = 0, None
    t = time.perf_counter()
    for i, out in engine.stream(prompts, configs, keys, progress=args.progress):
        first = first if first is not None else time.perf_counter() - t
        tokens += int(out.num_generated.sum())
    wall = time.perf_counter() - t
    assert compiles.seconds - compile_s < 1.0, "the second pass compiled"
    st = engine.stats
    return dict(tokens=tokens, wall_s=wall, wall_with_compile_s=cold, compile_s=compile_s, first_done_s=first,
                useful_slot_step_share=st["useful_slot_steps"] / max(1, st["slot_steps"]), stats=st)


def batches(prompts, new, size: int, sample: int = 0):
    """The fixed batches of ``size`` prompts in workload order; with ``sample`` > 0, only that many of them,
    spread evenly over the workload (a systematic sample, so the sampled rate estimates the whole run's)."""
    starts = list(range(0, len(prompts), size))
    if 0 < sample < len(starts):
        starts = [starts[(i * len(starts)) // sample] for i in range(sample)]
    for at in starts:
        yield at, prompts[at:at + size], new[at:at + size]


from jaxgen.api.inputs import left_pad  # noqa: E402  (after the env set-up above)


def run_jaxgen(prompts, new, args) -> dict:
    """One pass; its time leaves out what jax spent compiling."""
    import jax
    import numpy as np

    import jaxgen

    compiles = CompileTime()
    model = jaxgen.load_model(model_path(args), dtype="float32")
    cfg = sampling_config(model)
    keys = jax.random.split(jax.random.key(0), len(prompts))
    tokens = slot_steps = 0
    first = None
    t = time.perf_counter()
    for at, ps, ns in batches(prompts, new, SLOTS // SAMPLES, args.baseline_batches):
        ids, mask = left_pad(ps, cfg.pad_token_id)
        out = jaxgen.generate(model, ids, mask, config=cfg.replace(max_new_tokens=max(ns)), key=keys[at:at + len(ps)])
        g = np.asarray(out.num_generated).reshape(len(ps), SAMPLES)
        tokens += sum(useful(g[i], ns[i]) for i in range(len(ps)))
        slot_steps += ids.shape[0] * SAMPLES * int(g.max())
        first = first if first is not None else time.perf_counter() - t - compiles.seconds
    wall = time.perf_counter() - t
    return dict(tokens=tokens, wall_s=wall - compiles.seconds, wall_with_compile_s=wall, compile_s=compiles.seconds,
                first_done_s=first, useful_slot_step_share=tokens / max(1, slot_steps))


def run_transformers(prompts, new, args) -> dict:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    path = model_path(args)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gen = model.generation_config
    torch.manual_seed(0)
    tokens = slot_steps = 0
    first = None
    t = time.perf_counter()
    for at, ps, ns in batches(prompts, new, SLOTS // SAMPLES, args.baseline_batches):
        ids, mask = left_pad(ps, gen.pad_token_id)
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                                 attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=True,
                                 temperature=0.8, top_p=0.95, top_k=gen.top_k, num_return_sequences=SAMPLES,
                                 max_new_tokens=max(ns), pad_token_id=gen.pad_token_id, eos_token_id=gen.eos_token_id)
        new_tokens = out[:, ids.shape[1]:].numpy()
        steps = new_tokens.shape[1]
        # tokens up to and including the first EOS (transformers pads after it with the same id)
        is_eos = new_tokens == gen.eos_token_id
        g = np.where(is_eos.any(1), is_eos.argmax(1) + 1, steps).reshape(len(ps), SAMPLES)
        tokens += sum(useful(g[i], ns[i]) for i in range(len(ps)))
        slot_steps += len(ps) * SAMPLES * steps
        first = first if first is not None else time.perf_counter() - t
    wall = time.perf_counter() - t
    return dict(tokens=tokens, wall_s=wall, compile_s=0.0, first_done_s=first,
                useful_slot_step_share=tokens / max(1, slot_steps))


def child(args) -> None:
    sys.path.insert(0, ROOT)
    mem = PeakRSS()
    prompts, new = workload(args.num_prompts)
    res = dict(engine=run_engine, jaxgen=run_jaxgen, transformers=run_transformers)[args.system](prompts, new, args)
    res.update(mem.result())
    if args.system != "engine":
        res["batches_timed"] = len(list(batches(prompts, new, SLOTS // SAMPLES, args.baseline_batches)))
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            res["device_peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    except Exception:
        pass
    res["tok_s"] = res["tokens"] / res["wall_s"]
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 prompts instead of 256")
    ap.add_argument("--num-prompts", type=int, default=None)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    ap.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--progress", action="store_true", help="tqdm bar for the engine run")
    ap.add_argument("--schedule", default="longest_first", choices=("longest_first", "fifo"),
                    help="the engine's admission order")
    ap.add_argument("--baseline-batches", type=int, default=0,
                    help="time only this many of the fixed batches (evenly spread) for jaxgen.generate and "
                         "transformers; 0: all. The engine always runs the whole workload")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--model", default="demo", help="demo (the bundled model) or a benchmark model name "
                    "(llama-5m, llama-125m, ...: benchmarks/harness/models.py)")
    ap.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "jaxgen-bench-models"),
                    help="where random models are saved (and reused)")
    args = ap.parse_args()
    if args.num_prompts is None:
        args.num_prompts = 32 if args.quick else 256
    if args.system:
        return child(args)
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results = {}
    for system in args.systems.split(","):
        print(f"[bench_engine] {system}: {args.num_prompts} prompts x {SAMPLES} samples ...", file=sys.stderr,
              flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--system", system, "--num-prompts", str(args.num_prompts),
               "--schedule", args.schedule, "--model", args.model, "--model-dir", args.model_dir,
               "--baseline-batches", str(args.baseline_batches)]
        proc = subprocess.run(cmd + (["--progress"] if args.progress else []), capture_output=True, text=True,
                              env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{system} failed (exit {proc.returncode})")
        results[system] = json.loads(lines[-1][len("RESULT "):])
    head = f"{'system':<13}{'tok/s':>9}{'useful tok':>12}{'run s':>9}{'compile s':>11}{'1st done s':>12}" \
           f"{'useful slot-steps':>19}{'peak RSS MiB':>14}"
    print(head)
    for name, r in results.items():
        print(f"{name:<13}{r['tok_s']:>9.0f}{r['tokens']:>12}{r['wall_s']:>9.1f}{r['compile_s']:>11.1f}"
              f"{r['first_done_s']:>12.2f}{r['useful_slot_step_share']:>18.0%} {r['peak_rss_mib']:>13.0f}")
    if args.baseline_batches:
        print(f"(jaxgen.generate and transformers: {args.baseline_batches} of the fixed batches, evenly spread)")
    if "engine" in results:
        for other in ("jaxgen", "transformers"):
            if other in results:
                print(f"engine / {other}: {results['engine']['tok_s'] / results[other]['tok_s']:.2f}x tok/s")
    if args.out:
        import platform

        with open(args.out, "w") as f:
            json.dump(dict(model=args.model, num_prompts=args.num_prompts, samples=SAMPLES, slots=SLOTS,
                           schedule=args.schedule, baseline_batches=args.baseline_batches, cpus=os.cpu_count(),
                           machine=platform.machine(), results=results), f, indent=1)


if __name__ == "__main__":
    main()
