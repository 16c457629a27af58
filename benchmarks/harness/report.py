"""The benchmark's report: compile figures from the probes, the table, the targets, the chart.

Reads the result schema of ``bench_generate.py`` (``results/cpu.json`` is an example): a mode's
``transformers_flax`` entry, present only when the old transformers-Flax runner ran, is optional everywhere.
"""

from __future__ import annotations

from harness.models import MODE_TITLES

# Targets of issue 6 (2-core CPU machine): (model, mode, field, target, label); a negative target is a maximum.
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


def summarize_compile(res: dict) -> None:
    """Copy the probes' cold / warm compile times and peak RSS into each mode's record."""
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
            ttft = fmt(j["ttft_s"] * 1e3) + "/" + fmt(h["ttft_s"] * 1e3 if h else None)
            step = fmt(j["decode_step_ms"], ".2f") + "/" + fmt(h.get("decode_step_ms"), ".2f")
            comp = fmt(m.get("compile_cold_s"), ".2f") + "/" + fmt(m.get("compile_warm_s"), ".2f")
            rss = fmt(m.get("jaxgen_peak_rss_MiB"), ".0f") + "/" + fmt(m.get("transformers_peak_rss_MiB"), ".0f")
            print(f"{r['name']:<11} {MODE_TITLES[mode]:<18} {j['tok_s']:>12.1f} {fmt(h.get('tok_s')):>9} "
                  f"{fmt(m.get('ratio'), '.2f'):>6} {ttft:>14} {step:>14} {m['floor']['floor_ms']:>8.2f} "
                  f"{fmt(m['floor']['floor_pct'], '.0f'):>6} {comp:>19} {rss:>14}")
            fx = m.get("transformers_flax")
            if fx:
                print(f"{'':<11} {'':<18} transformers-Flax {fx['tok_s']:.1f} tok/s (jaxgen "
                      f"{fmt(m.get('ratio_flax'), '.2f')}x), TTFT {fx['ttft_s'] * 1e3:.1f} ms, step "
                      f"{fmt(fx.get('decode_step_ms'), '.2f')} ms")
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


def check_targets(res: dict, verbose: bool = True) -> list:
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
    if verbose:
        print("\ntargets:")
        for t in out:
            status = "n/a" if t["met"] is None else ("MET " if t["met"] else "MISS")
            print(f"  [{status}] {t['target']}: {t['value']}")
    return out


def plot(res: dict, path: str) -> None:
    """One panel per model: tok/s per mode (log scale), bars per framework, the floor as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = res["models"]
    flax = any(m.get("transformers_flax") for r in models for m in r["modes"].values())
    sides = [("jaxgen", "#3b7dd8"), ("transformers", "#e8833a")] + ([("transformers_flax", "#6aa84f")] if flax else [])
    w = 0.8 / len(sides)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.6), squeeze=False)
    for ax, r in zip(axes[0], models):
        modes = list(r["modes"])
        x = np.arange(len(modes))
        bars = {s: [(r["modes"][m].get(s) or {}).get("tok_s") or 0 for m in modes] for s, _ in sides}
        for i, (s, color) in enumerate(sides):
            ax.bar(x - 0.4 + w * (i + 0.5), bars[s], w, label=s.replace("_", "-"), color=color)
        for i, m in enumerate(modes):
            rt = r["modes"][m].get("ratio")
            if rt:
                ax.text(i, max(b[i] for b in bars.values()) * 1.02, f"{rt:.1f}x", ha="center", va="bottom",
                        fontsize=8)
            if m in ("greedy_b1", "greedy_b8"):
                ceiling = 1e3 / r["modes"][m]["floor"]["floor_ms"] * r["modes"][m]["batch"]
                ax.plot([i - 0.4, i + 0.4], [ceiling] * 2, "k--", lw=1)
                ax.text(i + 0.42, ceiling, "floor", fontsize=7, va="center")
        ax.set_xticks(x, [MODE_TITLES[m] for m in modes], rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("new tokens / s (log)")
        ax.set_title(f"{r['name']} ({r['config']['num_params'] / 1e6:.1f}M params)", fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
    dev = res["device"]
    fig.suptitle(f"jaxgen vs transformers {res['versions'].get('transformers')} - {dev['name']} "
                 f"({dev['cores']} cores), {res['settings']['dtype']}, {res['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
