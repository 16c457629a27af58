"""The old transformers-Flax ``generate`` (transformers < 5, which still had Flax models) as a runner.

It needs its own venv, since its jax and flax are older than jaxgen's, e.g.::

    python -m venv /tmp/hf-flax && /tmp/hf-flax/bin/pip install "transformers==4.46.3" "flax==0.8.5" \
        "jax[cpu]==0.4.30" "numpy<2"
    python benchmarks/bench_generate.py --flax-python /tmp/hf-flax/bin/python

The runner keeps one child process (``hf_flax_child.py``) alive and asks it for one timed call at a time, so
its calls alternate with jaxgen's and transformers' within each round like theirs do.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import numpy as np

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_flax_child.py")


class FlaxRunner:
    """``call(settings, ids, mask, n) -> (seconds, new tokens)`` in the child; no ``top_logprobs`` support."""

    def __init__(self, python: str, path: str, dtype: str = "float32", timeout: float = 1800):
        self.timeout = timeout
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child cannot block on it
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # another jax version must not share jaxgen's cache
        self.proc = subprocess.Popen([python, CHILD, path, dtype], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env)
        ready = self._read()
        self.load_s, self.pad, self.versions = ready["load_s"], ready["pad"], ready["versions"]

    @staticmethod
    def supports(settings: dict) -> bool:
        return not settings.get("top_logprobs")

    def call(self, settings: dict, ids, mask, n: int, **extra):
        req = dict(settings=dict(settings, **extra), ids=np.asarray(ids).tolist(), mask=np.asarray(mask).tolist(),
                   n=n)
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rep = self._read()
        new = np.asarray(rep["tokens"])
        assert new.shape[1] == n, f"transformers-Flax generated {new.shape[1]} tokens, expected {n}"
        return rep["dt"], new

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.stderr.seek(0)
                raise RuntimeError(f"transformers-Flax child exited (rc {self.proc.poll()}):\n"
                                   f"{self.stderr.read()[-3000:]}")
            if line.startswith("FLAX_JSON "):
                rep = json.loads(line[len("FLAX_JSON "):])
                if "error" in rep:
                    raise RuntimeError(f"transformers-Flax child: {rep['error']}\n{rep.get('trace', '')}")
                return rep

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()
