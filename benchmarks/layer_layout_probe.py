#!/usr/bin/env python
"""Per-layer weights (Python loop, unrolled) vs stacked weights under ``lax.scan``: decode speed and compile time.

    python benchmarks/layer_layout_probe.py [--model llama-125m] [--max-new-tokens 64] [--runs 7]

A minimal one-jit greedy decoder (prefill + ``lax.while_loop``) written twice over the same jaxgen-loaded weights:
``unrolled`` keeps one array per layer and loops in Python (12 copies of the layer in the program); ``scan`` stacks
every layer's weights into ``[L, ...]`` arrays and runs ``lax.scan`` over them (one copy of the layer). Both give
the same tokens; the two are timed alternately in one process. On XLA:CPU the scanned version slices each layer's
weights out of the stacked arrays (a copy per weight per step), which is why it decodes slower there, while it
compiles faster. This measurement backs the per-backend choice of layout recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def rms(x, w, eps):
    import jax
    import jax.numpy as jnp
    return w * (x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps))


def rope(x, pos, theta):
    import jax.numpy as jnp
    d = x.shape[-1]
    inv = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    f = pos[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([f, f], -1)
    half = d // 2
    rot = x * jnp.cos(emb)[:, :, None] + jnp.concatenate([-x[..., half:], x[..., :half]], -1) * jnp.sin(emb)[:, :, None]
    return rot.astype(x.dtype)  # the float32 angles must not promote bfloat16 activations (cache writes)


def layer(w, x, kc, vc, pos, idx, allowed, cfg):
    """One Llama layer on x [B, T, H]; caches [B, KV, S, D] updated at slot idx."""
    import jax
    import jax.numpy as jnp
    heads, kv, hd, eps, theta = cfg
    b, t, _ = x.shape
    h = rms(x, w["ln1"], eps)
    q = (h @ w["q"]).reshape(b, t, heads, hd)
    k = (h @ w["k"]).reshape(b, t, kv, hd)
    v = (h @ w["v"]).reshape(b, t, kv, hd)
    q, k = rope(q, pos, theta), rope(k, pos, theta)
    kc = jax.lax.dynamic_update_slice(kc, k.transpose(0, 2, 1, 3), (0, 0, idx, 0))
    vc = jax.lax.dynamic_update_slice(vc, v.transpose(0, 2, 1, 3), (0, 0, idx, 0))
    s = jnp.einsum("btkgd,bksd->bkgts", q.reshape(b, t, kv, heads // kv, hd), kc) * hd ** -0.5
    p = jax.nn.softmax(jnp.where(allowed[:, None, None], s, -1e30), -1)
    o = jnp.einsum("bkgts,bksd->btkgd", p, vc).reshape(b, t, heads * hd)
    x = x + o @ w["o"]
    h = rms(x, w["ln2"], eps)
    return x + (jax.nn.silu(h @ w["gate"]) * (h @ w["up"])) @ w["down"], kc, vc


def forward(W, cfg, tok, pos, kc, vc, idx, valid, layout):
    import jax
    import jax.numpy as jnp
    t, s = tok.shape[1], valid.shape[1]
    x = W["embed"][tok]
    allowed = valid[:, None, :] & (jnp.arange(s)[None, :] <= idx + jnp.arange(t)[:, None])[None]
    if layout == "scan":
        def body(x, xs):
            w, k1, v1 = xs
            x, k1, v1 = layer(w, x, k1, v1, pos, idx, allowed, cfg)
            return x, (k1, v1)
        x, (kc, vc) = jax.lax.scan(body, x, (W["layers"], kc, vc))
    else:
        nk, nv = [], []
        for i, w in enumerate(W["layers"]):
            x, k1, v1 = layer(w, x, kc[i], vc[i], pos, idx, allowed, cfg)
            nk.append(k1)
            nv.append(v1)
        kc, vc = nk, nv
    return rms(x[:, -1], W["norm"], cfg[3]) @ W["head"], kc, vc


@functools.partial(__import__("jax").jit, static_argnames=("cfg", "n", "layout"))
def generate(W, ids, cfg, n, layout):
    import jax
    import jax.numpy as jnp
    b, t = ids.shape
    s = t + n
    n_layers = (W["layers"]["q"].shape[0] if layout == "scan" else len(W["layers"]))
    shape = (b, cfg[1], s, cfg[2])
    dtype = W["embed"].dtype  # float32 on CPU, bfloat16 on an accelerator (benchmarks/gpu_check.py)
    if layout == "scan":
        kc = vc = jnp.zeros((n_layers,) + shape, dtype)
    else:
        kc = vc = [jnp.zeros(shape, dtype) for _ in range(n_layers)]
    valid = jnp.zeros((b, s), bool).at[:, :t].set(True)
    logits, kc, vc = forward(W, cfg, ids, jnp.broadcast_to(jnp.arange(t), (b, t)), kc, vc, 0, valid, layout)
    out = jnp.zeros((b, n), jnp.int32).at[:, 0].set(jnp.argmax(logits, -1).astype(jnp.int32))

    def body(c):
        i, out, kc, vc, valid = c
        valid = jax.lax.dynamic_update_slice(valid, jnp.ones((b, 1), bool), (0, t + i - 1))
        lg, kc, vc = forward(W, cfg, out[:, i - 1][:, None], jnp.full((b, 1), t + i - 1), kc, vc, t + i - 1, valid,
                             layout)
        return i + 1, out.at[:, i].set(jnp.argmax(lg, -1).astype(jnp.int32)), kc, vc, valid

    return jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(1), out, kc, vc, valid))[1]


def weights(model, layout):
    import jax
    import jax.numpy as jnp
    p = {".".join(map(str, k)): v.get_value() if hasattr(v, "get_value") else v.value
         for k, v in model.params.flat_state()}
    names = dict(ln1="input_layernorm.weight", q="self_attn.q_proj.kernel", k="self_attn.k_proj.kernel",
                 v="self_attn.v_proj.kernel", o="self_attn.o_proj.kernel", ln2="post_attention_layernorm.weight",
                 gate="mlp.gate_proj.kernel", up="mlp.up_proj.kernel", down="mlp.down_proj.kernel")
    layers = [{k: p[f"model.layers.{i}.{n}"] for k, n in names.items()}
              for i in range(model.config.num_hidden_layers)]
    if layout == "scan":
        layers = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    head = p["model.embed_tokens.embedding"].T if model.config.tie_word_embeddings else p["lm_head.kernel"]
    return dict(layers=layers, embed=p["model.embed_tokens.embedding"], norm=p["model.norm.weight"], head=head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-125m", help="llama-5m, llama-125m or a checkpoint folder")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--models-dir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import jax
    import numpy as np
    import jaxgen
    from harness.models import MODEL_SPECS, build_random_model

    path = args.model
    if path in MODEL_SPECS:
        path = build_random_model(path, args.models_dir or tempfile.mkdtemp(prefix="jaxgen-layout-"))
    model = jaxgen.load_model(path)
    c = model.config
    if c.qkv_bias or c.o_bias or c.mlp_bias or c.qk_norm or c.sliding_window or c.rope.rope_type != "default":
        sys.exit("this probe covers plain Llama layers only")
    cfg = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps, c.rope.theta)
    n = args.max_new_tokens
    ids = np.random.default_rng(0).integers(3, c.vocab_size, size=(1, 32)).astype(np.int32)
    res, fns = {}, {}
    for layout in ("unrolled", "scan"):
        w = weights(model, layout)
        progs = {}
        for nn in (n, 1):
            c0, t0 = time.process_time(), time.perf_counter()
            lowered = generate.lower(w, ids, cfg, nn, layout)
            compiled = lowered.compile()
            if nn == n:
                res[layout] = dict(compile_s=time.perf_counter() - t0, compile_cpu_s=time.process_time() - c0)
            progs[nn] = compiled
        fns[layout] = (w, progs)
        res[layout]["tokens"] = np.asarray(progs[n](w, ids))
    same = bool((res["unrolled"]["tokens"] == res["scan"]["tokens"]).all())
    times = {k: {n: [], 1: []} for k in fns}
    for r in range(args.runs):
        for layout in (("unrolled", "scan") if r % 2 == 0 else ("scan", "unrolled")):
            w, progs = fns[layout]
            for nn in (n, 1):
                t = time.perf_counter()
                jax.block_until_ready(progs[nn](w, ids))
                times[layout][nn].append(time.perf_counter() - t)
    print(f"{os.path.basename(path)} on {jax.devices()[0].device_kind}, {n} new tokens, {args.runs} alternating runs; "
          f"same tokens: {same}")
    for layout in fns:
        t, t1 = statistics.median(times[layout][n]), statistics.median(times[layout][1])
        ratio = statistics.median(a / b for a, b in zip(times[layout][n], times["unrolled"][n]))
        print(f"  {layout:9s} decode {n / t:6.1f} tok/s  step {(t - t1) / (n - 1) * 1e3:6.2f} ms  "
              f"time vs unrolled {ratio:4.2f}x  compile {res[layout]['compile_s']:5.2f} s wall "
              f"({res[layout]['compile_cpu_s']:.2f} s CPU)")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
