#!/usr/bin/env python
"""Decode-step time against context length: Gated DeltaNet layers (a fixed-size state) vs full attention (a cache
that grows), on the Qwen3.5-shaped benchmark model's layer sizes.

    python benchmarks/linear_state_probe.py [--contexts 64,512,4096] [--runs 7] [--out results/linear-state.json]

Two random jaxgen models (no checkpoint, no torch): the benchmark's ``qwen3_5-shaped`` config with every layer a
``linear_attention`` layer, and the same with every layer ``full_attention``. For each context length ``n`` one
jitted single-token ``model.step`` runs at slot ``n`` of a cache of ``n + 1`` slots (all earlier slots valid), so
attention reads ``n`` keys while the linear layers read only their state. Times are medians of ``--runs`` rounds,
the contexts alternating within each round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def build(kind: str, fields: dict):
    import numpy as np

    from jaxgen.config import ModelConfig
    from jaxgen.model import model_from_arrays, param_shapes

    raw = dict(fields, model_type="qwen3_5_text", layer_types=[kind] * fields["num_hidden_layers"])
    config = ModelConfig.from_hf_dict(raw)
    rng = np.random.default_rng(0)
    arrays = {name: (0.02 * rng.standard_normal(shape)).astype(np.float32)
              for name, shape in param_shapes(config).items()}
    return model_from_arrays(config, arrays)


def prepared_step(model, context: int):
    """A compiled single-token step at slot ``context`` (all earlier slots valid): a no-argument timing call."""
    import jax
    import jax.numpy as jnp

    step = jax.jit(model.step)
    cache = model.init_cache(1, context + 1)
    cache = cache.replace(valid=cache.valid.at[:, :context].set(True), index=jnp.asarray(context, jnp.int32))
    args = (model.params, jnp.asarray([[5]], jnp.int32), jnp.asarray([[context]], jnp.int32), cache,
            jnp.ones((1, 1), jnp.int32))
    call = lambda: jax.block_until_ready(step(*args))  # noqa: E731
    call()  # compile
    return call


def timed(call, reps: int = 5) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t) / reps


def main() -> None:
    from harness.models import MODEL_SPECS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="64,512,4096")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    fields = dict(MODEL_SPECS["qwen3_5-shaped"][2], rms_norm_eps=1e-6, max_position_embeddings=8192)
    report = {"contexts": contexts, "runs": args.runs, "ms": {}}
    for kind in ("linear_attention", "full_attention"):
        model = build(kind, fields)
        calls = {c: prepared_step(model, c) for c in contexts}
        rounds = {c: [] for c in contexts}
        for _ in range(args.runs):
            for c in contexts:
                rounds[c].append(timed(calls[c]))
        report["ms"][kind] = {c: round(1e3 * statistics.median(v), 3) for c, v in rounds.items()}
        row = ", ".join(f"{c}: {report['ms'][kind][c]:.2f} ms" for c in contexts)
        print(f"{kind:17s} {row}  ({contexts[-1]} / {contexts[0]}: "
              f"{report['ms'][kind][contexts[-1]] / report['ms'][kind][contexts[0]]:.2f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
