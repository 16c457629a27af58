"""``jaxgen crosscheck``: the same prompts through transformers (PyTorch) and jaxgen, and where they differ."""

from __future__ import annotations

import argparse
import os

from jaxgen.cli.common import UserError, add_common, collect_prompts


def add_parser(sub) -> None:
    c = sub.add_parser("crosscheck", help="compare jaxgen with transformers on the same checkpoint",
                       description="Run transformers (PyTorch) and jaxgen on the same prompts and compare logits, "
                                   "logprobs and tokens. Exit status 1 on any MISMATCH.")
    add_common(c, model_required=True)
    c.add_argument("--jax-model", "--jax_model", dest="jax_model", metavar="DIR",
                   help="folder for jaxgen's side (default: --model), e.g. a converted copy")
    c.add_argument("--modes", default="greedy,beam,sample", help="comma-separated: greedy,beam,sample")
    c.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=16, metavar="N")
    c.add_argument("--num-beams", "--num_beams", dest="num_beams", type=int, default=3, metavar="N")
    c.add_argument("--seeds", default="0", help="comma-separated sampling seeds (default 0)")
    c.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    for name, typ in (("temperature", float), ("top_k", int), ("top_p", float), ("min_p", float)):
        c.add_argument(f"--{name.replace('_', '-')}", *([f"--{name}"] if "_" in name else []), dest=name, type=typ,
                       default=None, help=f"sampling {name} (default: the checkpoint's, else transformers')")
    c.set_defaults(run=run)


DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, there was a")


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from jaxgen.crosscheck.compare import compare
    from jaxgen.text.tokenizer import has_tokenizer

    hf_logging.disable_progress_bar()  # keep the terminal for the report
    if not os.path.isdir(args.model):
        raise UserError(f"model folder {args.model} does not exist.")
    prompts = collect_prompts(args, required=False)
    if not prompts:
        if has_tokenizer(args.model):
            prompts = list(DEFAULT_PROMPTS)
        else:
            raise UserError(f"{args.model} has no tokenizer; give token-id prompts with --ids (e.g. --ids "
                            "\"1,15,27,4\") or a prompts file of id lists.")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    sample_config = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "min_p")
                     if getattr(args, k) is not None}
    report = compare(args.model, prompts, modes=modes, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                     seeds=seeds, num_beams=args.num_beams, sample_config=sample_config, chat=args.chat,
                     jax_model_dir=args.jax_model)
    print(report.to_json() if args.json else report.table(), flush=True)
    return 1 if report.has_mismatch else 0
