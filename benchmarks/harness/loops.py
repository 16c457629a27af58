"""Does the decode loop's control flow cost a host round trip per step? Three decode-only greedy loops over the
same ``model.step``, timed alternately:

- ``fori``: ``lax.fori_loop`` with a static trip count. XLA knows the count, so on GPU the loop runs without
  reading a predicate back to the host.
- ``while``: ``lax.while_loop`` on a traced limit (as jaxgen's loop, whose rows may stop early): on GPU every
  iteration copies the predicate to the host and waits for it.
- ``while_cond``: the same plus a ``lax.cond`` around the model call (jaxgen's ``model_if``): a conditional's
  branch index is also read on the host before the branch runs.

Per-step differences (``while - fori``, ``while_cond - while``) are the cost of each sync. On XLA:CPU all three
run on the host, so the differences there are ~0 (that is what ``--smoke`` shows).
"""

from __future__ import annotations

import time


def _loops(model, batch: int, steps: int):
    import jax
    import jax.numpy as jnp

    step = model.step
    ones = jnp.ones((batch, 1), jnp.int32)

    def advance(params, tok, i, cache):
        pos = jnp.full((batch, 1), i, jnp.int32)
        logits, cache = step(params, tok[:, None], pos, cache, ones)
        return jnp.argmax(logits[:, 0], -1).astype(jnp.int32), cache

    def fresh():  # inside each program, as jaxgen allocates its cache: XLA updates it in place
        return jnp.zeros((batch,), jnp.int32), model.init_cache(batch, steps)

    @jax.jit
    def fori(params, limit):
        del limit  # the trip count is static here: that is the point of this variant
        tok, cache = fresh()
        body = lambda i, c: advance(params, c[0], i, c[1])
        return jax.lax.fori_loop(0, steps, body, (tok, cache))[0]

    @jax.jit
    def while_(params, limit):
        tok, cache = fresh()
        body = lambda c: (c[0] + 1, *advance(params, c[1], c[0], c[2]))
        return jax.lax.while_loop(lambda c: c[0] < limit, body, (jnp.int32(0), tok, cache))[1]

    @jax.jit
    def while_cond(params, limit):
        tok, cache = fresh()

        def body(c):
            i, tok, cache = c
            # As jaxgen's model_if: the model runs under a cond (always true here: its predicate is still read).
            tok, cache = jax.lax.cond(i < limit, lambda t, k: advance(params, t, i, k), lambda t, k: (t, k),
                                      tok, cache)
            return i + 1, tok, cache

        return jax.lax.while_loop(lambda c: c[0] < limit, body, (jnp.int32(0), tok, cache))[1]

    return dict(fori=fori, **{"while": while_, "while_cond": while_cond})


def loop_sync_probe(model, batch: int = 1, steps: int = 128, rounds: int = 5) -> dict:
    """Per-step time of the three loops (microseconds), their differences, compile times, token agreement."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgen.bench.measure import median

    fns = _loops(model, batch, steps)
    limit = jnp.int32(steps)
    out, tokens, times = {}, {}, {k: [] for k in fns}
    for name, fn in fns.items():
        t = time.perf_counter()
        tokens[name] = np.asarray(jax.block_until_ready(fn(model.params, limit)))
        out[f"{name}_first_call_s"] = time.perf_counter() - t
    for r in range(rounds):
        names = list(fns)[r % 3:] + list(fns)[:r % 3]
        for name in names:
            t = time.perf_counter()
            jax.block_until_ready(fns[name](model.params, limit))
            times[name].append(time.perf_counter() - t)
    us = {k: median(v) / steps * 1e6 for k, v in times.items()}
    out.update({f"{k}_step_us": v for k, v in us.items()})
    out["while_minus_fori_us"] = us["while"] - us["fori"]
    out["cond_minus_while_us"] = us["while_cond"] - us["while"]
    out["same_tokens"] = bool(all((tokens[k] == tokens["fori"]).all() for k in tokens))
    out.update(batch=batch, steps=steps, rounds=rounds, times_s=times)
    return out
