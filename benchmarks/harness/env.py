"""Process setup shared by the benchmark scripts: JAX platform and compilation cache, compile events, RSS."""

from __future__ import annotations

import contextlib
import os
import sys
import threading


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def set_jax_env(device: str, cache_dir: str | None) -> None:
    """Must run before jax is imported."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    platform = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}.get(device)
    if platform:
        os.environ["JAX_PLATFORMS"] = platform
    if cache_dir:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir


def configure_jax_cache(cache_dir: str | None) -> None:
    """Persistent compilation cache for every program, however small (warm-compile measurements need them all)."""
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
