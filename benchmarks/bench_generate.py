#!/usr/bin/env python
"""jaxgen vs transformers generation, side by side in one run, against the machine's physical floor.

    python benchmarks/bench_generate.py                  # full run (CPU, float32), ~15 min on 2 cores
    python benchmarks/bench_generate.py --quick          # spot check, < 5 min on 2 cores
    python benchmarks/bench_generate.py --device gpu     # the same on an accelerator, in bfloat16

Models: random Llamas of ~5M and ~125M parameters built with transformers and saved with ``save_pretrained``
(both frameworks load the same folder, so the weights are identical), plus the bundled demo model when present.
EOS is disabled on both sides, so every run generates exactly ``max_new_tokens`` tokens (checked).

Per model and mode (greedy b1, greedy b8 left-padded, sampling b1, beam-4 b1, greedy + top_logprobs=5 b1):
tokens/s (median of ``--runs`` timed runs after warm-up, jaxgen and transformers alternating within one
process so that load from other processes hits both alike), time to first token (a ``max_new_tokens=1`` call),
decode time per step ((t(N) - t(1)) / (N - 1)), compile time cold (fresh process, empty persistent cache) and
warm (fresh process, persistent cache filled), peak RSS of each framework alone (separate processes), and the
ratio. Ratios are medians of per-round ratios (transformers time / jaxgen time of the same round).

The floor, measured in the same run: memory bandwidth (large array copies) -> the shortest possible decode step
(bytes of weights + KV cache read per token / bandwidth); matmul FLOP rate -> the shortest batched step.

Output: a table on stdout, a JSON file (``--out``) with device, versions and settings, and a PNG chart.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODES = ("greedy_b1", "greedy_b8", "sample_b1", "beam4_b1", "logprobs5_b1")
MODE_TITLES = {"greedy_b1": "greedy b1", "greedy_b8": "greedy b8", "sample_b1": "sampling b1",
               "beam4_b1": "beam-4 b1", "logprobs5_b1": "greedy+top5 lp b1"}
SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)
B8_LENGTHS = (32, 9, 17, 25, 12, 30, 5, 21)  # left-padded to 32 (one prompt bucket)
PROMPT_LEN = 32
SEED = 0

# Random Llamas (transformers LlamaConfig); initializer_range 0.2 makes logits spread out, so greedy/beam paths
# are not degenerate repeats of one token.
MODEL_SPECS = {
    "llama-5m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=4096),
    "llama-125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=4, vocab_size=32000),
}
DEMO_NAME = "demo"

# Targets of issue 6 (2-core CPU machine); checked and printed at the end.
TARGETS = [
    ("llama-125m", "greedy_b1", "floor_pct", 90.0, "125M greedy b1 >= 90% of bandwidth floor"),
    ("llama-125m", "greedy_b1", "ratio", 1.8, "125M greedy b1 >= 1.8x transformers"),
    ("llama-5m", "greedy_b1", "ratio", 4.0, "5M greedy b1 >= 4x transformers"),
    ("llama-125m", "beam4_b1", "ratio", 3.0, "beam-4 >= 3x transformers (125M)"),
    ("llama-5m", "beam4_b1", "ratio", 3.0, "beam-4 >= 3x transformers (5M)"),
    ("llama-125m", "sample_b1", "ratio", 2.0, "sampling >= 2x transformers (125M)"),
    ("llama-5m", "sample_b1", "ratio", 2.0, "sampling >= 2x transformers (5M)"),
    ("llama-125m", "greedy_b8", "ratio", 1.5, "125M greedy b8 >= 1.5x transformers"),
    ("llama-125m", "logprobs5_b1", "lp_overhead_pct", -5.0, "top_logprobs=5 overhead <= 5% (125M)"),
    ("llama-5m", "logprobs5_b1", "lp_overhead_pct", -5.0, "top_logprobs=5 overhead <= 5% (5M)"),
    ("llama-125m", None, "compile_cold_max_s", -5.0, "compile <= 5 s per mode (125M, cold)"),
    (None, None, "recompiles", -0.0, "zero recompiles (other prompt length / temperature / top_p)"),
]


# ----------------------------------------------------------------------------------------------- utilities

def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs) if xs else None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_rss_sampler(period: float = 0.002):
    """Samples this process's RSS in a thread; yields a dict whose ``peak`` is the maximum seen (bytes)."""
    box = {"peak": rss_bytes()}
    stop = threading.Event()

    def run():
        while not stop.is_set():
            box["peak"] = max(box["peak"], rss_bytes())
            stop.wait(period)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield box
    finally:
        stop.set()
        t.join()
        box["peak"] = max(box["peak"], rss_bytes())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        return None


def set_jax_env(device: str, cache_dir: str | None) -> None:
    """Must run before jax is imported."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif device == "gpu":
        os.environ["JAX_PLATFORMS"] = "cuda"
    elif device == "tpu":
        os.environ["JAX_PLATFORMS"] = "tpu"
    if cache_dir:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir


def configure_jax_cache(cache_dir: str | None) -> None:
    import jax
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class CompileEvents:
    """Collects jax's compile-duration events (trace / lower / backend compile / persistent-cache hits)."""

    def __init__(self):
        import jax.monitoring as mon
        self.durations: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        mon.register_event_duration_secs_listener(self._dur)
        mon.register_event_listener(self._evt)

    def _dur(self, event, duration, **_):
        self.durations[event] = self.durations.get(event, 0.0) + float(duration)

    def _evt(self, event, **_):
        self.counts[event] = self.counts.get(event, 0) + 1

    def snapshot(self):
        return dict(self.durations), dict(self.counts)

    @staticmethod
    def diff(before, after):
        (d0, c0), (d1, c1) = before, after
        short = lambda k: k.rsplit("/", 1)[-1]
        out = {short(k): round(v - d0.get(k, 0.0), 4) for k, v in d1.items() if v - d0.get(k, 0.0) > 0}
        out.update({short(k): v - c0.get(k, 0) for k, v in c1.items() if v - c0.get(k, 0) > 0})
        return out


# ------------------------------------------------------------------------------------------------- models

def build_random_model(name: str, folder: str) -> str:
    """A random Llama saved with ``save_pretrained`` (float32), EOS unset; reused if already there."""
    import torch
    import transformers
    path = os.path.join(folder, name)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    cfg = transformers.LlamaConfig(**MODEL_SPECS[name], initializer_range=0.2, max_position_embeddings=2048,
                                   bos_token_id=1, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    del model
    return path


def demo_model_path() -> str | None:
    """The bundled model's folder when it is complete (config and weights), else None."""
    import glob
    from jaxgen.loading import BUNDLED_MODEL
    has_weights = glob.glob(os.path.join(BUNDLED_MODEL, "*.safetensors")) or os.path.isfile(
        os.path.join(BUNDLED_MODEL, "pytorch_model.bin"))
    return BUNDLED_MODEL if os.path.isfile(os.path.join(BUNDLED_MODEL, "config.json")) and has_weights else None


def make_prompts(path: str, vocab: int, pad: int) -> dict:
    """Identical prompts for both frameworks: b1 of PROMPT_LEN tokens, b8 of mixed lengths left-padded."""
    import numpy as np
    rng = np.random.default_rng(SEED)
    lo = min(3, vocab - 1)
    toks = None
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        # A real prompt for a real model: its own tokenizer on a line of Python (the demo model's domain).
        import transformers
        tok = transformers.AutoTokenizer.from_pretrained(path)
        text = ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
                "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nclass Stack:\n")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= max(B8_LENGTHS):
            toks = np.asarray(ids, np.int64)
    if toks is None:
        toks = rng.integers(lo, vocab, size=max(B8_LENGTHS))
    b1 = toks[None, :PROMPT_LEN].astype(np.int32)
    width = max(B8_LENGTHS)
    ids8 = np.full((len(B8_LENGTHS), width), pad, np.int32)
    mask8 = np.zeros((len(B8_LENGTHS), width), np.int32)
    for r, n in enumerate(B8_LENGTHS):
        row = np.roll(toks, 3 * r)[:n] if r else toks[:n]
        ids8[r, width - n:], mask8[r, width - n:] = row, 1
    return dict(b1=(b1, np.ones_like(b1)), b8=(ids8, mask8))


def mode_settings(mode: str) -> dict:
    if mode == "sample_b1":
        return dict(do_sample=True, **SAMPLING)
    if mode == "beam4_b1":
        return dict(num_beams=4)
    if mode == "logprobs5_b1":
        return dict(top_logprobs=5)
    return {}


def param_bytes(model) -> dict:
    """Bytes a batch-1 decode step must read: every weight except the embedding table (one row is gathered),
    unless the embeddings are tied (then the table is the LM head and read in full)."""
    import jax
    total = embed = 0
    for path, v in model.params.flat_state():
        value = v.get_value()
        n = int(value.size) * value.dtype.itemsize
        total += n
        if ".".join(map(str, path)).endswith("embed_tokens.embedding"):
            embed = n
    tied = model.config.tie_word_embeddings
    read = total if tied else total - embed + embed // model.config.vocab_size
    del jax
    return dict(total=total, per_step=read)


# ----------------------------------------------------------------------------------------------- runners

class JaxgenRunner:
    def __init__(self, path: str, dtype: str):
        import jaxgen
        import jax
        self.jax, self.jaxgen = jax, jaxgen
        t = time.perf_counter()
        self.model = jaxgen.load_model(path, dtype=dtype)
        jax.block_until_ready(self.model.params)
        self.load_s = time.perf_counter() - t
        gc = self.model.generation_config or {}
        cfg = self.model.config
        pad = gc.get("pad_token_id", cfg.pad_token_id)
        self.pad = int(pad if pad is not None else 0)
        self.vocab = cfg.vocab_size

    def call(self, mode: str, ids, mask, n: int, **extra):
        import numpy as np
        kw = dict(max_new_tokens=n, eos_token_id=None, pad_token_id=self.pad, do_sample=False, num_beams=1,
                  top_logprobs=0)
        kw.update(mode_settings(mode))
        kw.update(extra)
        key = self.jax.random.key(SEED) if kw.get("do_sample") else None
        t = time.perf_counter()
        out = self.jaxgen.generate(self.model, ids, mask, key=key, **kw)
        self.jax.block_until_ready(out)
        dt = time.perf_counter() - t
        gen = np.asarray(out.num_generated)
        assert (gen == n).all(), f"jaxgen generated {gen.tolist()} tokens, expected {n}"
        return dt, np.asarray(out.sequences)[:, ids.shape[1]:]

    def cache_size(self) -> int:
        gen = sys.modules["jaxgen.api.generate"]
        if hasattr(gen, "compile_count"):
            return gen.compile_count()
        return gen._compiled._cache_size()


class HFRunner:
    def __init__(self, path: str, device: str):
        import torch
        import transformers
        self.torch = torch
        torch.set_num_threads(os.cpu_count() or 1)
        t = time.perf_counter()
        if device == "cpu":
            self.dev, dtype = "cpu", torch.float32
        else:
            self.dev, dtype = "cuda", torch.bfloat16
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.dev).eval()
        self.load_s = time.perf_counter() - t
        gc = copy.deepcopy(self.model.generation_config)
        pad = gc.pad_token_id if gc.pad_token_id is not None else self.model.config.pad_token_id
        self.pad = int(pad if pad is not None else 0)
        # EOS off: nothing stops a row before max_new_tokens (the length of every output is checked).
        gc.eos_token_id = None
        gc.pad_token_id = self.pad
        gc.do_sample, gc.temperature, gc.top_k, gc.top_p, gc.max_length = False, 1.0, 50, 1.0, None
        self.base_config = gc

    def call(self, mode: str, ids, mask, n: int, **extra):
        import numpy as np
        torch = self.torch
        gc = copy.deepcopy(self.base_config)
        gc.max_new_tokens, gc.min_new_tokens = n, None
        s = mode_settings(mode)
        if s.get("do_sample"):
            gc.do_sample, gc.temperature, gc.top_k, gc.top_p = True, s["temperature"], s["top_k"], s["top_p"]
        if s.get("num_beams"):
            gc.num_beams = s["num_beams"]
        lp = s.get("top_logprobs", 0)
        if lp:
            gc.return_dict_in_generate, gc.output_logits = True, True
        torch.manual_seed(SEED)
        t = time.perf_counter()
        with torch.inference_mode():
            ii = torch.as_tensor(ids, dtype=torch.long, device=self.dev)
            mm = torch.as_tensor(mask, dtype=torch.long, device=self.dev)
            out = self.model.generate(ii, attention_mask=mm, generation_config=gc)
            if lp:
                # What a user does for top-k logprobs in transformers: log-softmax of the kept logits, then top-k.
                logits = torch.stack(out.logits, dim=1).float()
                top = torch.log_softmax(logits, dim=-1).topk(lp, dim=-1)
                _ = top.values.cpu(), top.indices.cpu()
                out = out.sequences
            if self.dev != "cpu":
                torch.cuda.synchronize()
        dt = time.perf_counter() - t
        new = out[:, ids.shape[1]:].cpu().numpy()
        assert new.shape[1] == n, f"transformers generated {new.shape[1]} tokens, expected {n}"
        return dt, new


# ------------------------------------------------------------------------------------------------- floors

def measure_floor(device: str) -> dict:
    """Memory bandwidth (large array copies) and matmul FLOP rate on this device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    res = {}
    reps = 7
    nbytes = 256 * 2 ** 20 if device == "cpu" else 2 * 2 ** 30
    n = nbytes // 4
    if device == "cpu":
        src = np.ones(n, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            np.copyto(dst, src)
            ts.append(time.perf_counter() - t)
        res["numpy_copy_GBps"] = 2 * nbytes / min(ts) / 1e9  # read + write
        del src, dst
        # A matrix-vector product reads the matrix once on every core BLAS uses: the access pattern of a
        # batch-1 decode step, so it is the most demanding estimate of the read bandwidth actually reachable.
        mat = np.ones((n // 8192, 8192), np.float32)
        vec = np.ones(8192, np.float32)
        mat @ vec
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            mat @ vec
            ts.append(time.perf_counter() - t)
        res["numpy_gemv_read_GBps"] = nbytes / min(ts) / 1e9
        del mat, vec
    x = jnp.ones((n,), jnp.float32)
    copy_fn = jax.jit(lambda a: a + 1.0)  # a streaming read + write, on every core XLA uses
    read_fn = jax.jit(lambda a: jnp.sum(a))  # read only
    for name, fn, factor in (("jax_copy_GBps", copy_fn, 2), ("jax_read_GBps", read_fn, 1)):
        jax.block_until_ready(fn(x))
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            y = fn(x)
            jax.block_until_ready(y)
            ts.append(time.perf_counter() - t)
            del y
        res[name] = factor * nbytes / min(ts) / 1e9
    del x
    # The floor uses the best figure measured (copies count read + write bytes; the read-only reduction is
    # what a decode step mostly does): the highest bandwidth gives the shortest, i.e. strictest, floor.
    res["bandwidth_GBps"] = max(v for k, v in res.items() if k.endswith("GBps"))
    dim = 2048 if device == "cpu" else 8192
    dt = jnp.float32 if device == "cpu" else jnp.bfloat16
    a = jnp.ones((dim, dim), dt)
    mm = jax.jit(lambda p, q: p @ q)
    jax.block_until_ready(mm(a, a))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(mm(a, a))
        ts.append(time.perf_counter() - t)
    res["matmul_GFLOPs"] = 2 * dim ** 3 / min(ts) / 1e9
    res["matmul_shape"] = [dim, dim, dim]
    res["matmul_dtype"] = jnp.dtype(dt).name
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}


def step_floor(pbytes: dict, cfg, rows: int, mean_ctx: float, kv_itemsize: int, floor: dict,
               params_count: int) -> dict:
    """Shortest decode step: weights + KV cache read / bandwidth, and 2 * params * rows FLOPs / matmul rate."""
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * kv_itemsize * mean_ctx * rows
    read = pbytes["per_step"] + kv
    bw_s = read / (floor["bandwidth_GBps"] * 1e9)
    flops = 2.0 * params_count * rows
    flop_s = flops / (floor["matmul_GFLOPs"] * 1e9)
    return dict(bytes_per_step=int(read), kv_bytes_per_step=int(kv), bandwidth_floor_ms=bw_s * 1e3,
                flops_per_step=flops, flop_floor_ms=flop_s * 1e3, floor_ms=max(bw_s, flop_s) * 1e3,
                bound="bandwidth" if bw_s >= flop_s else "flops")


# ------------------------------------------------------------------------------------------ child probes

def probe_main(args) -> None:
    """Child process: one framework alone -> compile times (first call - second call) and peak RSS per mode."""
    set_jax_env(args.device, args.probe_cache)
    out = dict(framework=args.probe, modes={})
    if args.probe == "jaxgen":
        configure_jax_cache(args.probe_cache)
        events = CompileEvents()
        import numpy as np  # noqa: F401
        runner = JaxgenRunner(args.probe_model, "float32" if args.device == "cpu" else "bfloat16")
    else:
        events = None
        runner = HFRunner(args.probe_model, args.device)
    out["load_s"] = runner.load_s
    out["rss_after_load_MiB"] = rss_bytes() / 2 ** 20
    prompts = make_prompts(args.probe_model, runner_vocab(runner), runner.pad)
    for mode in args.probe_modes.split(","):
        ids, mask = prompts["b8" if mode == "greedy_b8" else "b1"]
        with peak_rss_sampler() as peak:
            before = events.snapshot() if events else None
            c0 = time.process_time()
            first, _ = runner.call(mode, ids, mask, args.probe_n)
            c1 = time.process_time()
            after = events.snapshot() if events else None
            second, _ = runner.call(mode, ids, mask, args.probe_n)
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


def runner_vocab(runner) -> int:
    if isinstance(runner, JaxgenRunner):
        return runner.vocab
    return int(runner.model.config.vocab_size)


def run_probe(framework: str, model_path: str, modes, n: int, device: str, cache_dir: str | None,
              timeout: float = 1800) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--_probe", framework, "--_probe-model", model_path,
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


# -------------------------------------------------------------------------------------------- main bench

def timed_rounds(fns: dict, runs: int) -> dict:
    """Alternate the callables ``runs`` times (order rotated every round); returns name -> list of seconds."""
    names = list(fns)
    out = {k: [] for k in names}
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            out[k].append(fns[k]())
    return out


def paired_ratio(num: list, den: list) -> float | None:
    if not num or not den:
        return None
    return statistics.median(a / b for a, b in zip(num, den))


def bench_model(name: str, path: str, args, floor: dict, cache_dir: str) -> dict:
    """All modes for one model. ``cache_dir``: the persistent compilation cache this process uses; the cold
    probe gets it before any of this model's programs are in it, the warm probe and this process after."""
    import jax
    import numpy as np

    n = args.max_new_tokens
    modes = args.modes
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    res = dict(name=name, path=path if name == DEMO_NAME else None, modes={})

    # --- child processes: compile cold / warm and peak RSS, each framework alone.
    probes = {}
    if not args.no_probes:
        log(f"[{name}] probes: jaxgen cold compile (fresh process, none of its programs cached)")
        probes["jaxgen_cold"] = run_probe("jaxgen", path, modes, n, args.device, cache_dir)
        log(f"[{name}] probes: jaxgen warm compile (fresh process, persistent cache filled)")
        warm_modes = modes[:1] if args.quick else modes  # --quick: one warm figure is enough for a spot check
        probes["jaxgen_warm"] = run_probe("jaxgen", path, warm_modes, n, args.device, cache_dir)
        if not args.no_hf and not args.quick:
            log(f"[{name}] probes: transformers alone (peak RSS)")
            probes["hf"] = run_probe("hf", path, modes, n, args.device, None)
    res["probes"] = probes

    # --- this process: both frameworks, alternating.
    jg = JaxgenRunner(path, dtype)
    hf = None if args.no_hf else HFRunner(path, args.device)
    cfg = jg.model.config
    res["config"] = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                         num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                         intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
                         tie_word_embeddings=cfg.tie_word_embeddings, num_params=jg.model.num_params())
    res["load_s"] = dict(jaxgen=jg.load_s, transformers=hf.load_s if hf else None)
    pbytes = param_bytes(jg.model)
    res["param_bytes"] = pbytes
    prompts = make_prompts(path, jg.vocab, jg.pad)
    if hf is not None and hf.pad != jg.pad:
        log(f"[{name}] warning: pad ids differ (jaxgen {jg.pad}, transformers {hf.pad})")
    kv_item = 4 if dtype == "float32" else 2
    events = CompileEvents()

    for mode in modes:
        ids, mask = prompts["b8" if mode == "greedy_b8" else "b1"]
        rows = ids.shape[0] * (4 if mode == "beam4_b1" else 1)
        rec = dict(batch=int(ids.shape[0]), rows=rows, max_new_tokens=n, prompt_lengths=mask.sum(1).tolist(),
                   settings=mode_settings(mode))
        log(f"[{name}] {mode}: warm-up")
        before = events.snapshot()
        t0 = time.perf_counter()
        jg_first, jg_tokens = jg.call(mode, ids, mask, n)
        rec["jaxgen_first_call_s"] = jg_first
        rec["jaxgen_first_call_events"] = CompileEvents.diff(before, events.snapshot())
        jg.call(mode, ids, mask, 1)  # compile the TTFT program (a different output bucket)
        if hf is not None:
            _, hf_tokens = hf.call(mode, ids, mask, n)
            hf.call(mode, ids, mask, 1)
            if mode != "sample_b1":
                rec["tokens_match_fraction"] = float((jg_tokens == hf_tokens).mean())
                rec["first_divergence"] = [int(np.argmax(r != h)) if (r != h).any() else None
                                           for r, h in zip(jg_tokens, hf_tokens)]
        rec["warmup_wall_s"] = time.perf_counter() - t0

        fns = {"jaxgen": lambda: jg.call(mode, ids, mask, n)[0],
               "jaxgen_ttft": lambda: jg.call(mode, ids, mask, 1)[0]}
        if mode == "logprobs5_b1":
            fns["jaxgen_no_lp"] = lambda: jg.call("greedy_b1", ids, mask, n)[0]
        if hf is not None:
            fns["hf"] = lambda: hf.call(mode, ids, mask, n)[0]
            fns["hf_ttft"] = lambda: hf.call(mode, ids, mask, 1)[0]
        log(f"[{name}] {mode}: {args.runs} timed rounds")
        load0 = os.getloadavg()[0]
        times = timed_rounds(fns, args.runs)
        rec["loadavg_1min"] = [load0, os.getloadavg()[0]]
        rec["times_s"] = times
        new_tokens = ids.shape[0] * n
        for fw, key in (("jaxgen", "jaxgen"), ("transformers", "hf")):
            if key not in times:
                continue
            t, t1 = median(times[key]), median(times[key + "_ttft"])
            rec[fw] = dict(tok_s=new_tokens / t, time_s=t, ttft_s=t1,
                           decode_step_ms=(t - t1) / (n - 1) * 1e3 if n > 1 else None)
        if hf is not None:
            rec["ratio"] = paired_ratio(times["hf"], times["jaxgen"])
            rec["ratio_ttft"] = paired_ratio(times["hf_ttft"], times["jaxgen_ttft"])
            rec["ratio_decode_step"] = rec["transformers"]["decode_step_ms"] / rec["jaxgen"]["decode_step_ms"]
        if mode == "logprobs5_b1":
            # A few % is below the round-to-round noise of 5 runs: measure the pair on more interleaved rounds.
            pairs = timed_rounds({"lp": fns["jaxgen"], "no_lp": fns["jaxgen_no_lp"]},
                                 max(10, 2 * args.runs) if args.quick else max(15, 3 * args.runs))
            rec["lp_pair_times_s"] = pairs
            rec["lp_overhead_pct"] = (paired_ratio(pairs["lp"], pairs["no_lp"]) - 1) * 100
        mean_ctx = float(np.mean(mask.sum(1))) + (n + 1) / 2
        fl = step_floor(pbytes, cfg, rows, mean_ctx, kv_item, floor, jg.model.num_params()
                        - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1))
        step = rec["jaxgen"]["decode_step_ms"]
        fl["floor_pct"] = 100 * fl["floor_ms"] / step if step else None
        fl["bandwidth_floor_pct"] = 100 * fl["bandwidth_floor_ms"] / step if step else None
        if hf is not None and rec["transformers"]["decode_step_ms"]:
            fl["transformers_floor_pct"] = 100 * fl["floor_ms"] / rec["transformers"]["decode_step_ms"]
        rec["floor"] = fl
        res["modes"][mode] = rec

    # --- zero recompiles: same buckets, other prompt length / sampling values / max_new_tokens.
    checks = []
    ids, mask = prompts["b1"]
    other = max(1, ids.shape[1] - 7)  # 25 tokens: same 32-token bucket
    probes_calls = []
    if "greedy_b1" in modes:
        probes_calls.append(("greedy_b1, prompt length %d -> %d" % (ids.shape[1], other), "greedy_b1",
                             ids[:, -other:], mask[:, -other:], n, {}))
        probes_calls.append(("greedy_b1, max_new_tokens %d -> %d" % (n, n - 3), "greedy_b1", ids, mask, n - 3, {}))
    if "sample_b1" in modes:
        probes_calls.append(("sampling, temperature 0.8 -> 0.6, top_p 0.9 -> 0.75, top_k 50 -> 20", "sample_b1",
                             ids, mask, n, dict(temperature=0.6, top_p=0.75, top_k=20)))
        probes_calls.append(("sampling, prompt length %d -> %d" % (ids.shape[1], other), "sample_b1",
                             ids[:, -other:], mask[:, -other:], n, {}))
    if "beam4_b1" in modes:
        probes_calls.append(("beam-4, prompt length %d -> %d" % (ids.shape[1], other), "beam4_b1",
                             ids[:, -other:], mask[:, -other:], n, {}))
    for label, mode, i2, m2, n2, extra in probes_calls:
        before = jg.cache_size()
        jg.call(mode, i2, m2, n2, **extra)
        checks.append(dict(check=label, new_compiles=jg.cache_size() - before))
    res["recompile_checks"] = checks
    res["recompiles"] = sum(c["new_compiles"] for c in checks)
    del jax
    return res


def summarize_compile(res: dict) -> None:
    for r in res["models"]:
        pr = r.get("probes") or {}
        cold, warm = pr.get("jaxgen_cold"), pr.get("jaxgen_warm")
        for mode, rec in r["modes"].items():
            if cold and mode in cold["modes"]:
                rec["compile_cold_s"] = cold["modes"][mode]["compile_s"]
                rec["compile_cold_cpu_s"] = cold["modes"][mode].get("compile_cpu_s")
                rec["jaxgen_peak_rss_MiB"] = cold["modes"][mode]["peak_rss_MiB"]
            if warm and mode in warm["modes"]:
                rec["compile_warm_s"] = warm["modes"][mode]["compile_s"]
            if pr.get("hf") and mode in pr["hf"]["modes"]:
                rec["transformers_peak_rss_MiB"] = pr["hf"]["modes"][mode]["peak_rss_MiB"]
        colds = [m.get("compile_cold_s") for m in r["modes"].values() if m.get("compile_cold_s") is not None]
        r["compile_cold_max_s"] = max(colds) if colds else None


def fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def print_table(res: dict) -> None:
    hdr = (f"{'model':<11} {'mode':<18} {'jaxgen tok/s':>12} {'HF tok/s':>9} {'ratio':>6} {'TTFT ms jg/HF':>14} "
           f"{'step ms jg/HF':>14} {'floor ms':>8} {'%floor':>6} {'compile s cold/warm':>19} "
           f"{'RSS MiB jg/HF':>14}")
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in res["models"]:
        for mode, m in r["modes"].items():
            j, h = m["jaxgen"], m.get("transformers") or {}
            print(f"{r['name']:<11} {MODE_TITLES[mode]:<18} {j['tok_s']:>12.1f} {fmt(h.get('tok_s')):>9} "
                  f"{fmt(m.get('ratio'), '.2f'):>6} "
                  f"{fmt(j['ttft_s'] * 1e3, '.1f') + '/' + fmt(h['ttft_s'] * 1e3 if h else None, '.1f'):>14} "
                  f"{fmt(j['decode_step_ms'], '.2f') + '/' + fmt(h.get('decode_step_ms'), '.2f'):>14} "
                  f"{m['floor']['floor_ms']:>8.2f} {fmt(m['floor']['floor_pct'], '.0f'):>6} "
                  f"{fmt(m.get('compile_cold_s'), '.2f') + '/' + fmt(m.get('compile_warm_s'), '.2f'):>19} "
                  f"{fmt(m.get('jaxgen_peak_rss_MiB'), '.0f') + '/' + fmt(m.get('transformers_peak_rss_MiB'), '.0f'):>14}")
            if mode == "logprobs5_b1":
                print(f"{'':<11} {'':<18} top_logprobs=5 overhead vs plain greedy: {m['lp_overhead_pct']:+.1f}%")
    f = res["floor"]
    print(f"\nfloor: bandwidth {f['bandwidth_GBps']:.1f} GB/s, the best of: numpy copy "
          f"{fmt(f.get('numpy_copy_GBps'))} (read+write), numpy GEMV read {fmt(f.get('numpy_gemv_read_GBps'))}, "
          f"jax copy {f['jax_copy_GBps']:.1f}, jax read-only {f['jax_read_GBps']:.1f}; "
          f"matmul {f['matmul_GFLOPs']:.1f} GFLOP/s {f['matmul_dtype']} {f['matmul_shape']}")
    for r in res["models"]:
        print(f"recompiles [{r['name']}]: " + "; ".join(f"{c['check']}: {c['new_compiles']}"
                                                     for c in r["recompile_checks"]))


def check_targets(res: dict) -> list:
    models = {r["name"]: r for r in res["models"]}
    out = []
    for model, mode, field, target, label in TARGETS:
        if model is None:
            value = sum(r["recompiles"] for r in res["models"])
        elif model not in models:
            continue
        elif mode is None:
            value = models[model].get(field)
        elif mode not in models[model]["modes"]:
            continue
        else:
            m = models[model]["modes"][mode]
            value = m["floor"].get(field) if field == "floor_pct" else m.get(field)
        if value is None:
            out.append(dict(target=label, value=None, met=None))
            continue
        met = value >= target if target > 0 else value <= -target
        out.append(dict(target=label, value=round(value, 3), met=bool(met)))
    print("\ntargets:")
    for t in out:
        status = "n/a" if t["met"] is None else ("MET " if t["met"] else "MISS")
        print(f"  [{status}] {t['target']}: {t['value']}")
    return out


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    models = res["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.6), squeeze=False)
    for ax, r in zip(axes[0], models):
        modes = list(r["modes"])
        x = np.arange(len(modes))
        jg = [r["modes"][m]["jaxgen"]["tok_s"] for m in modes]
        hf = [(r["modes"][m].get("transformers") or {}).get("tok_s") or 0 for m in modes]
        ax.bar(x - 0.2, jg, 0.4, label="jaxgen", color="#3b7dd8")
        ax.bar(x + 0.2, hf, 0.4, label="transformers", color="#e8833a")
        for i, m in enumerate(modes):
            rt = r["modes"][m].get("ratio")
            if rt:
                ax.text(i, max(jg[i], hf[i]) * 1.02, f"{rt:.1f}x", ha="center", va="bottom", fontsize=8)
            if m in ("greedy_b1", "greedy_b8"):
                fl = r["modes"][m]["floor"]
                rows = r["modes"][m]["batch"]
                ceiling = 1e3 / fl["floor_ms"] * rows
                ax.plot([i - 0.4, i + 0.4], [ceiling] * 2, "k--", lw=1)
                ax.text(i + 0.42, ceiling, "floor", fontsize=7, va="center")
        ax.set_xticks(x, [MODE_TITLES[m] for m in modes], rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("new tokens / s (log)")
        n = r["config"]["num_params"]
        ax.set_title(f"{r['name']} ({n / 1e6:.1f}M params)", fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
    dev = res["device"]
    fig.suptitle(f"jaxgen vs transformers {res['versions'].get('transformers')} - {dev['name']} "
                 f"({dev['cores']} cores), {res['settings']['dtype']}, {res['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for p in ("jax", "jaxlib", "flax", "numpy", "transformers", "torch", "jaxgen"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short spot check (< 5 min on 2 cores)")
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"), default="cpu",
                    help="cpu runs float32; gpu/tpu run bfloat16 (transformers on CUDA when torch has it)")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/<device>[-quick].json)")
    ap.add_argument("--chart", default=None, help="PNG chart (default: the JSON path with .png)")
    ap.add_argument("--models", default=None, help="comma list of llama-5m, llama-125m, demo (default all)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    ap.add_argument("--runs", type=int, default=None, help="timed runs per framework (>= 5; default 5 / 7)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="default 128 (16 with --quick: one output bucket, so the TTFT call needs no extra compile)")
    ap.add_argument("--models-dir", default=None, help="where the random models are saved (default: a temp dir)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
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
        return probe_main(args)

    started = time.perf_counter()
    if args.high_priority:
        try:
            os.nice(-20)  # inherited by the child probes
        except OSError:
            log("--high-priority: not permitted here, running at normal priority")
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
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    cache_dir = tempfile.mkdtemp(prefix="jaxgen-bench-main-cache-")
    set_jax_env(args.device, None)
    import jax
    configure_jax_cache(cache_dir)
    import numpy as np  # noqa: F401

    wanted = args.models.split(",") if args.models else list(MODEL_SPECS) + [DEMO_NAME]
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
    floor = measure_floor(args.device)
    dev = jax.devices()[0]
    res = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=dict(kind=args.device, jax_platform=dev.platform, jax_device=str(dev.device_kind),
                    name=cpu_name() if args.device == "cpu" else str(dev.device_kind),
                    cpu=cpu_name(), cores=os.cpu_count(), mem_GiB=mem_total_gib(), host=platform.node(),
                    os=platform.platform()),
        versions=versions(),
        settings=dict(quick=args.quick, runs=args.runs, max_new_tokens=args.max_new_tokens, modes=args.modes,
                      dtype="float32" if args.device == "cpu" else "bfloat16", prompt_length=PROMPT_LEN,
                      b8_prompt_lengths=list(B8_LENGTHS), sampling=SAMPLING, seed=SEED,
                      torch_threads=None, xla_flags=os.environ.get("XLA_FLAGS", ""), niceness=os.nice(0),
                      model_specs=MODEL_SPECS, initializer_range=0.2, eos="disabled on both sides",
                      transformers_cache="default (DynamicCache), no torch.compile"),
        loadavg_start=os.getloadavg(), floor=floor, models=[])
    for name, path in paths.items():
        r = bench_model(name, path, args, floor, cache_dir)
        res["models"].append(r)
    try:
        import torch
        res["settings"]["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
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
