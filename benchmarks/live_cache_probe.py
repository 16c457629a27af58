#!/usr/bin/env python
"""What a long ``max_new_tokens`` costs when the rows stop early: the same greedy call with ``max_new_tokens=64``
and ``4096`` (many ``generation_config.json`` files set ``max_length`` 4096), an EOS that ends the row after about
50 tokens in both.

    python benchmarks/live_cache_probe.py [--models llama-5m,llama-125m] [--runs 7] [--out results/live-cache.json]

The benchmark's random models (harness/models.py). The EOS is the token greedy decoding emits first at a step as
close to 50 as there is (found with EOS disabled); both calls then generate the same tokens. A 4096-token budget
means a cache of ~4100 slots: attention reads only its written part, in chunks (jaxgen.nn.attention
``_live_attention``), so the long call should cost about what the short one does. Medians of ``--runs`` rounds,
the two budgets alternating; batch 1 and batch 8 (all rows stop at the same EOS token; a row that never emits it
runs to the budget, so batch 8 reports how many rows stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama-5m,llama-125m")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "live-cache.json"))
    args = ap.parse_args()
    import numpy as np

    import jaxgen
    from harness.models import build_random_model

    prompt = np.array([[1, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190]], np.int32)
    results = {}
    for name in args.models.split(","):
        model = jaxgen.load_model(build_random_model(name, tempfile.mkdtemp(prefix=f"{name}-")))
        probe = jaxgen.generate(model, prompt, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)
        first: dict[int, int] = {}
        for step, token in enumerate(np.asarray(probe.new_tokens)[0].tolist()):
            first.setdefault(token, step)
        eos, at = min(first.items(), key=lambda kv: abs(kv[1] - 49))
        row = dict(eos=eos, stops_after=at + 1)
        for batch in (1, 8):
            ids = np.repeat(prompt, batch, 0)
            kw = dict(do_sample=False, eos_token_id=int(eos), pad_token_id=0)

            def call(n: int) -> tuple[float, np.ndarray]:
                t0 = time.perf_counter()
                out = jaxgen.generate(model, ids, max_new_tokens=n, **kw)
                steps = np.asarray(out.num_generated)
                return time.perf_counter() - t0, steps

            times = {64: [], 4096: []}
            for n in times:  # warm-up: compile both budgets
                call(n)
            for _ in range(args.runs):
                for n in times:
                    times[n].append(call(n)[0])
            med = {n: statistics.median(v) for n, v in times.items()}
            row[f"b{batch}"] = dict(ms_64=1e3 * med[64], ms_4096=1e3 * med[4096], ratio=med[4096] / med[64],
                                    generated_4096=call(4096)[1].tolist())
            print(name, batch, row[f"b{batch}"], file=sys.stderr, flush=True)
        results[name] = row
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
