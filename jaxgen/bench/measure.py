"""The machine's floor (memory bandwidth, matmul rate), timing rounds with medians, and the environment.

The floor of a decode step is the time to read every byte the step must read (weights + KV cache) at the
bandwidth measured in the same process; ``% of floor`` = floor time / measured step time.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping

SEED = 0


def median(xs):
    return statistics.median(xs) if xs else None


def timed_rounds(fns: Mapping[str, Callable[[], float]], rounds: int, progress: Any = None) -> dict[str, list]:
    """Call every function once per round, the order rotated each round (A/B, B/A, ...), so that load from
    other processes hits all of them alike. Each function returns its own elapsed seconds; ``progress``
    (a tqdm bar or None) advances once per call. Returns name -> list of seconds."""
    names = list(fns)
    out: dict[str, list] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            out[k].append(fns[k]())
            if progress is not None:
                progress.update(1)
    return out


def paired_ratio(num: list, den: list) -> float | None:
    """Median of per-round ratios ``num[i] / den[i]`` (robust to a slow round hitting both)."""
    if not num or not den:
        return None
    return statistics.median(a / b for a, b in zip(num, den))


def _best_time(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up (compile, page faults)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def measure_floor(device: str | None = None, nbytes: int | None = None, reps: int = 7) -> dict:
    """Memory bandwidth (large array copies and a reduction, GB/s) and matmul rate (GFLOP/s) on this device.

    ``bandwidth_GBps`` is the best figure measured: the highest bandwidth gives the shortest, i.e. strictest,
    floor. Copies count read + write bytes; the read-only reduction is what a decode step mostly does.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    device = device or ("cpu" if jax.devices()[0].platform == "cpu" else "accelerator")
    nbytes = nbytes or (256 * 2 ** 20 if device == "cpu" else 2 * 2 ** 30)
    n = nbytes // 4
    res: dict[str, Any] = {}
    if device == "cpu":
        src = np.ones(n, np.float32)
        dst = np.empty_like(src)
        res["numpy_copy_GBps"] = 2 * nbytes / _best_time(lambda: np.copyto(dst, src), reps) / 1e9
        del src, dst
        # A matrix-vector product reads the matrix once on every core BLAS uses: the access pattern of a
        # batch-1 decode step, so it is the most demanding estimate of the read bandwidth actually reachable.
        mat = np.ones((n // 8192, 8192), np.float32)
        vec = np.ones(8192, np.float32)
        res["numpy_gemv_read_GBps"] = nbytes / _best_time(lambda: mat @ vec, reps) / 1e9
        del mat, vec
    x = jnp.ones((n,), jnp.float32)
    copy_fn = jax.jit(lambda a: a + 1.0)  # a streaming read + write (a bare copy could be elided by XLA)
    read_fn = jax.jit(jnp.sum)  # read only
    res["jax_copy_GBps"] = 2 * nbytes / _best_time(lambda: jax.block_until_ready(copy_fn(x)), reps) / 1e9
    res["jax_read_GBps"] = nbytes / _best_time(lambda: jax.block_until_ready(read_fn(x)), reps) / 1e9
    del x
    res["bandwidth_GBps"] = max(v for k, v in res.items() if k.endswith("GBps"))
    dim = 2048 if device == "cpu" else 8192
    dt = jnp.float32 if device == "cpu" else jnp.bfloat16
    a = jnp.ones((dim, dim), dt)
    mm = jax.jit(lambda p, q: p @ q)
    res["matmul_GFLOPs"] = 2 * dim ** 3 / _best_time(lambda: jax.block_until_ready(mm(a, a)), reps) / 1e9
    res["matmul_shape"] = [dim, dim, dim]
    res["matmul_dtype"] = jnp.dtype(dt).name
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}


def expert_fraction(config, rows: int = 1) -> float:
    """Expected share of a MoE layer's experts that ``rows`` tokens read in one decode step (1.0 without experts):
    ``1 - (1 - k / E) ** rows`` for top-``k`` of ``E`` under uniform routing (batch 1: exactly ``k / E``)."""
    moe = next((spec.moe for spec in config.layers if spec.moe is not None), None)
    if moe is None:
        return 1.0
    return 1.0 - (1.0 - moe.top_k / moe.num_experts) ** rows


def param_bytes(model, rows: int = 1) -> dict:
    """Bytes a decode step of ``rows`` rows must read: every weight except the embedding tables (one row per token
    is gathered; a tied table is the LM head and read in full), with routed experts counted at
    :func:`expert_fraction` (only the chosen experts' weights are read). ``total``: every parameter's bytes."""
    total = read = 0.0
    fraction = expert_fraction(model.config, rows)
    for path, v in model.params.flat_state():
        value = v.get_value() if hasattr(v, "get_value") else v.value
        n = int(value.size) * value.dtype.itemsize
        name = ".".join(map(str, path))
        total += n
        if name.endswith("embed_tokens.embedding") and not model.config.tie_word_embeddings:
            read += n // model.config.vocab_size
        elif name.endswith("embed_positions.embedding"):
            read += n // value.shape[0]
        elif ".mlp.experts." in name or ".moe.experts." in name:
            read += n * fraction
        else:
            read += n
    return dict(total=int(total), per_step=int(read), expert_fraction=fraction)


def matmul_params(model, rows: int = 1) -> int:
    """Parameters that take part in a step's matrix products: the untied embedding table and learned positions
    are only gathered; routed experts count at :func:`expert_fraction`."""
    total = 0.0
    fraction = expert_fraction(model.config, rows)
    for path, v in model.params.flat_state():
        name = ".".join(map(str, path))
        size = int((v.get_value() if hasattr(v, "get_value") else v.value).size)
        if (name.endswith("embed_tokens.embedding") and not model.config.tie_word_embeddings) or \
                name.endswith("embed_positions.embedding"):
            continue
        total += size * (fraction if ".mlp.experts." in name or ".moe.experts." in name else 1.0)
    return int(total)


def kv_bytes(cfg, rows: int, mean_ctx: float, itemsize: int) -> float:
    """Bytes of keys and values one decode step reads, for ``rows`` rows attending to ``mean_ctx`` slots."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * itemsize * mean_ctx * rows


def step_floor(pbytes: dict, cfg, rows: int, mean_ctx: float, kv_itemsize: int, floor: dict,
               params_count: int) -> dict:
    """Shortest decode step: (weights + KV cache read) / bandwidth, and 2 * params * rows FLOPs / matmul rate;
    the floor is the larger of the two."""
    kv = kv_bytes(cfg, rows, mean_ctx, kv_itemsize)
    read = pbytes["per_step"] + kv
    bw_s = read / (floor["bandwidth_GBps"] * 1e9)
    flops = 2.0 * params_count * rows
    flop_s = flops / (floor["matmul_GFLOPs"] * 1e9)
    return dict(bytes_per_step=int(read), kv_bytes_per_step=int(kv), bandwidth_floor_ms=bw_s * 1e3,
                flops_per_step=flops, flop_floor_ms=flop_s * 1e3, floor_ms=max(bw_s, flop_s) * 1e3,
                bound="bandwidth" if bw_s >= flop_s else "flops")


def step_times(t_full: float, t_short: float, n_full: int, n_short: int) -> tuple[float, float]:
    """``(decode step s, time to first token s)`` from two runs of ``n_full`` and ``n_short`` new tokens.

    When noise makes the difference non-positive (very short runs), the step is bounded by ``t_full / n_full``
    (an over-estimate, so a ``% of floor`` from it errs low, never high).
    """
    step = (t_full - t_short) / (n_full - n_short) if n_full > n_short else 0.0
    if step <= 0:
        step = t_full / n_full
    return step, max(t_short - (n_short - 1) * step, t_short / n_short)


# ------------------------------------------------------------------------------------------- environment

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
    return None


def versions(packages=("jax", "jaxlib", "flax", "numpy", "transformers", "torch", "jaxgen")) -> dict:
    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def device_info(kind: str | None = None) -> dict:
    """What this process runs on: the JAX device, the host CPU, cores, memory."""
    import jax

    dev = jax.devices()[0]
    kind = kind or ("cpu" if dev.platform == "cpu" else dev.platform)
    return dict(kind=kind, jax_platform=dev.platform, jax_device=str(dev.device_kind),
                name=cpu_name() if dev.platform == "cpu" else str(dev.device_kind), cpu=cpu_name(),
                cores=os.cpu_count(), mem_GiB=mem_total_gib(), host=platform.node(), os=platform.platform(),
                device_count=jax.device_count())
