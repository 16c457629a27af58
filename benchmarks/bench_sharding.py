"""Memory per device when a model that does not fit one device's budget is split over a mesh of 8 CPU devices.

    python benchmarks/bench_sharding.py [--budget-mib 48] [--out benchmarks/results/sharding.json]

Builds a random Llama (~40M parameters, float32: ~160 MiB) with transformers, converts it with
``checkpoints_convert`` and loads it onto meshes (1,1) ... (1,8), (2,4): reports, per mesh, the bytes of parameters
and KV cache each device holds (from the arrays' addressable shards), whether that fits the budget, peak host RSS
during loading, and checks greedy tokens against the single-device run.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402


def per_device_bytes(tree) -> dict[str, int]:
    """Bytes held on each device by the arrays of ``tree`` (their addressable shards)."""
    out: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            out[str(shard.device)] = out.get(str(shard.device), 0) + shard.data.nbytes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-mib", type=float, default=48.0, help="memory budget of one fake device")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sharding.json"))
    args = ap.parse_args()

    import torch
    import transformers

    import jaxgen
    from checkpoints_convert import convert_checkpoint
    from jaxgen.cache import init_cache
    from jaxgen.parallel.sharding import cache_sharding, make_mesh

    root = tempfile.mkdtemp()
    cfg = transformers.LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                                   num_key_value_heads=8, vocab_size=16000, max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(os.path.join(root, "hf"))
    convert_checkpoint(os.path.join(root, "hf"), os.path.join(root, "jx"), progress=False)
    budget = args.budget_mib * 2**20
    ids = np.random.RandomState(0).randint(3, 16000, (8, 32))
    rows, reference = [], None
    for shape in [(1, 1), (1, 2), (1, 4), (1, 8), (2, 4)]:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        model = jaxgen.load_model(os.path.join(root, "jx"), mesh=make_mesh(*shape))
        load_s = time.perf_counter() - t0
        params = per_device_bytes(model.params)
        cache = init_cache(model.config, 8, 64 + 64)
        cache = jax.device_put(cache, cache_sharding(model.config, model.mesh))
        kv = per_device_bytes(cache)
        out = jaxgen.generate(model, ids, max_new_tokens=16)
        tokens = np.asarray(out.sequences)
        reference = tokens if reference is None else reference
        worst = max(params[d] + kv.get(d, 0) for d in params)
        rows.append(dict(mesh=shape, devices_used=len(params), max_param_mib=max(params.values()) / 2**20,
                         max_kv_cache_mib=max(kv.values()) / 2**20, max_total_mib=worst / 2**20,
                         fits_budget=worst <= budget, load_s=round(load_s, 2),
                         peak_host_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                         rss_growth_mib=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
                         tokens_equal_single_device=bool((tokens == reference).all())))
        del model, cache
    total = rows[0]["max_param_mib"]
    print(f"model: {total:.1f} MiB of float32 parameters; budget {args.budget_mib:.0f} MiB per device")
    print(f"{'mesh':>8} {'param MiB/dev':>14} {'KV MiB/dev':>11} {'fits':>5} {'load s':>7} {'same tokens':>12}")
    for r in rows:
        print(f"{str(tuple(r['mesh'])):>8} {r['max_param_mib']:14.1f} {r['max_kv_cache_mib']:11.2f} "
              f"{str(r['fits_budget']):>5} {r['load_s']:7.2f} {str(r['tokens_equal_single_device']):>12}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(date=time.strftime("%Y-%m-%d"), budget_mib=args.budget_mib, rows=rows,
                       jax=jax.__version__, devices=str(jax.devices()[0].platform)), f, indent=1)


if __name__ == "__main__":
    main()
