"""``jaxgen crosscheck``: the same prompts through transformers (PyTorch) and jaxgen, and where they differ."""

from __future__ import annotations

import argparse
import importlib.util


from jaxgen.cli.common import UserError, add_common, bounded_int, collect_prompts, seed_int


def add_parser(sub) -> None:
    c = sub.add_parser("crosscheck", help="compare jaxgen with transformers on the same checkpoint",
                       description="Run transformers (PyTorch) and jaxgen on the same prompts and compare logits, "
                                   "logprobs and tokens. Exit status 1 on any MISMATCH.")
    add_common(c)
    c.add_argument("--jax-model", "--jax_model", dest="jax_model", metavar="DIR",
                   help="folder for jaxgen's side (default: --model), e.g. a converted copy")
    c.add_argument("--modes", default="greedy,beam,sample", help="comma-separated: greedy,beam,sample")
    c.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=bounded_int(1), default=16,
                   metavar="N")
    c.add_argument("--num-beams", "--num_beams", dest="num_beams", type=bounded_int(1), default=3, metavar="N")
    c.add_argument("--seeds", default="0", help="comma-separated sampling seeds, each 0 <= seed < 2**32 (default 0)")
    c.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    c.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image for every prompt (repeat for several), through the checkpoint's processor and chat "
                        "template on both sides (Gemma 3, MiniCPM-V 4.6)")
    for name, typ in (("temperature", float), ("top_k", int), ("top_p", float), ("min_p", float)):
        c.add_argument(f"--{name.replace('_', '-')}", *([f"--{name}"] if "_" in name else []), dest=name, type=typ,
                       default=None, help=f"sampling {name} (default: the checkpoint's, else transformers')")
    c.set_defaults(run=run)


DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, there was a")


def _seeds(text: str) -> list[int]:
    try:
        return [seed_int(s.strip()) for s in text.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--seeds: each seed {e} (give comma-separated integers, e.g. 0,1,2).") from None


def run(args: argparse.Namespace) -> int:
    from jaxgen.loading import resolve_model_path

    # torch is an optional extra: say how to get it rather than fail on the import.
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"crosscheck runs transformers on PyTorch, and {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'jaxgen[crosscheck]'.")
    from transformers.utils import logging as hf_logging

    from jaxgen.crosscheck.compare import compare
    from jaxgen.text.tokenizer import has_tokenizer

    hf_logging.disable_progress_bar()  # keep the terminal for the report
    model = resolve_model_path(args.model)  # a folder, a Hub id in the local cache, or the bundled model
    prompts = collect_prompts(args, required=False)
    if not prompts:
        if has_tokenizer(model):
            prompts = list(DEFAULT_PROMPTS)
        else:
            raise UserError(f"{model} has no tokenizer; give token-id prompts with --ids (e.g. --ids "
                            "\"1,15,27,4\") or a prompts file of id lists.")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    seeds = _seeds(args.seeds)
    sample_config = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "min_p")
                     if getattr(args, k) is not None}
    images = None
    if args.image:
        from jaxgen.text.images import load_images

        images = load_images(args.image)
    report = compare(model, prompts, modes=modes, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                     seeds=seeds, num_beams=args.num_beams, sample_config=sample_config, chat=args.chat,
                     jax_model_dir=args.jax_model, images=images)
    print(report.to_json() if args.json else report.table(), flush=True)
    return 1 if report.has_mismatch else 0
