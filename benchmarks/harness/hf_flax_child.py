#!/usr/bin/env python
"""Child process of the transformers-Flax runner; runs in its own venv (transformers < 5 with flax and its own
jax), so it imports neither jaxgen nor the harness.

    VENV/bin/python hf_flax_child.py MODEL_DIR DTYPE

Protocol: one JSON request per stdin line ``{"settings", "ids", "mask", "n"}``; one reply per line on stdout,
prefixed ``FLAX_JSON `` (``{"dt", "tokens"}`` or ``{"error"}``). The first reply says it is ready.
``generate`` is wrapped in ``jax.jit`` per (settings, n), as a Flax user would; the time is measured here,
around the call and ``block_until_ready``, so the pipe is not in it.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def load(path: str, dtype: str):
    """The model and its params from the safetensors files, renamed and transposed as transformers' own
    PyTorch -> Flax conversion does (which would need torch in this venv)."""
    import jax.numpy as jnp
    import transformers
    from flax.traverse_util import unflatten_dict
    from safetensors.numpy import load_file

    cfg = transformers.AutoConfig.from_pretrained(path)
    model = transformers.FlaxLlamaForCausalLM(cfg, dtype=getattr(jnp, dtype), _do_init=False)
    flat = {}
    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        for name, value in load_file(file).items():
            parts = name.split(".")
            if parts[-1] == "weight" and "embed_tokens" in parts:
                parts[-1] = "embedding"
            elif parts[-1] == "weight" and value.ndim == 2:
                parts[-1], value = "kernel", value.T
            flat[tuple(parts)] = jnp.asarray(value, getattr(jnp, dtype))
    if ("lm_head", "kernel") not in flat:  # tied embeddings: Flax Llama has no tying, so give it the table
        flat[("lm_head", "kernel")] = flat[("model", "embed_tokens", "embedding")].T
    gc = model.generation_config
    pad = gc.pad_token_id if gc.pad_token_id is not None else cfg.pad_token_id
    # EOS must stop no row, and Flax's generate needs a positive id: vocab_size is one no row can produce.
    return model, unflatten_dict(flat), int(pad if pad is not None else 0), cfg.vocab_size


def main() -> None:
    import jax
    import numpy as np

    path, dtype = sys.argv[1], sys.argv[2]
    t = time.perf_counter()
    model, params, pad, never = load(path, dtype)
    jax.block_until_ready(params)
    programs = {}

    def program(settings: dict, n: int):
        key = (json.dumps(settings, sort_keys=True), n)
        if key not in programs:
            kw = dict(settings)
            kw.pop("top_logprobs", None)

            def run(params, ids, mask, rng):
                return model.generate(ids, attention_mask=mask, params=params, prng_key=rng, max_new_tokens=n,
                                      eos_token_id=never, pad_token_id=pad, **kw).sequences

            programs[key] = jax.jit(run)
        return programs[key]

    import importlib.metadata as md
    reply(dict(ready=True, load_s=time.perf_counter() - t, pad=pad,
               versions={p: md.version(p) for p in ("jax", "flax", "transformers")}))
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ids, mask = (np.asarray(req[k], np.int32) for k in ("ids", "mask"))
            fn = program(req["settings"], req["n"])
            t = time.perf_counter()
            out = jax.block_until_ready(fn(params, ids, mask, jax.random.PRNGKey(0)))
            dt = time.perf_counter() - t
            reply(dict(dt=dt, tokens=np.asarray(out)[:, ids.shape[1]:].tolist()))
        except Exception as e:  # reported to the parent, which decides; the child stays up for the next one
            reply(dict(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:]))


def reply(obj: dict) -> None:
    sys.stdout.write("FLAX_JSON " + json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
