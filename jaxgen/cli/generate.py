"""``jaxgen generate``: continuations streamed to stdout (or ``--json`` records), the seed on stderr."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading

from jaxgen.cli.common import UserError, add_common, add_generation_flags, collect_prompts, load, overrides, quote


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate text (streams to stdout)",
                       description="Generate continuations; text streams to stdout, the seed goes to stderr.")
    add_common(g)
    g.add_argument("--seed", type=int, help="sampling seed (default: a random one, printed to stderr)")
    g.add_argument("--mesh", metavar="DATA,MODEL", help="run on a device mesh, e.g. 2,4 (batch over DATA, tensor "
                                                         "parallel over MODEL)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() first (see README); process 0 prints")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    g.add_argument("--stream-every", "--stream_every", dest="stream_every", type=int, default=4, metavar="K",
                   help="hand text to the terminal every K tokens (default 4)")
    add_generation_flags(g)
    g.set_defaults(run=run)


def _print_token_table(tokens, k: int, out) -> None:
    rows = [(quote(t.text), f"{t.logprob:.4f}",
             "  ".join(f"{quote(a.text)} {a.logprob:.4f}" for a in t.alternatives[:k])) for t in tokens]
    w0 = max([5] + [len(r[0]) for r in rows])
    print(f"{'token'.ljust(w0)}  {'logprob':>9}  top-{k} alternatives", file=out)
    for tok, lp, alts in rows:
        print(f"{tok.ljust(w0)}  {lp:>9}  {alts}", file=out)


def run(args: argparse.Namespace) -> int:
    import jax

    from jaxgen.api.generate import resolve_config
    from jaxgen.text.generate_text import generate_text

    prompts = collect_prompts(args)
    if args.stream_every < 1:
        raise UserError(f"--stream-every must be >= 1, got {args.stream_every}.")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"seed: {seed}", file=sys.stderr, flush=True)
    model, tokenizer = load(args, prompts)
    cfg = resolve_config(model, None, overrides(args))  # validates every option before anything compiles
    base = jax.random.key(seed)
    out = sys.stdout if jax.process_index() == 0 else open(os.devnull, "w")  # multi-host: process 0 writes
    lock = threading.Lock()
    for i, prompt in enumerate(prompts):
        # Prompt i always samples with fold_in(key(seed), i): the same seed repeats any prompt of the run.
        key = jax.random.fold_in(base, i)[None]
        stream = not args.json and tokenizer is not None and cfg.num_return_sequences == 1 and cfg.num_beams == 1
        if not args.json and len(prompts) > 1:
            print(f"=== prompt {i}: {quote(prompt) if isinstance(prompt, str) else prompt}", file=out, flush=True)
        # Show the prompt then its continuation, as a person reads it (not for --json, chat or several returns).
        echo = not args.json and not args.chat and isinstance(prompt, str) and cfg.num_return_sequences == 1
        if echo:
            print(prompt, end="", file=out, flush=True)

        def streamer(row: int, piece: str) -> None:
            # Runs on the XLA callback thread: never raise there (a closed pipe, e.g. `| head`, ends the
            # output, and main() exits quietly once the call returns and the next write fails).
            with lock:
                try:
                    out.write(piece)
                    out.flush()
                except (BrokenPipeError, ValueError):
                    pass

        results = generate_text(model, tokenizer, [prompt], chat=args.chat, config=cfg, key=key,
                                streamer=streamer if stream else None, stream_every=args.stream_every)
        for r, res in enumerate(results):
            if args.json:
                record = dict(seed=seed, config=cfg.to_dict(), prompt=res.prompt, **{
                    k: v for k, v in res.to_dict().items() if k != "prompt"})
                if cfg.num_return_sequences > 1:
                    record["sequence_index"] = r
                if res.sequence_score is not None:
                    record["sequence_score"] = res.sequence_score
                print(json.dumps(record, ensure_ascii=False), file=out, flush=True)
                continue
            if len(results) > 1:
                print(f"--- sequence {r}" + (f" (score {res.sequence_score:.4f})" if res.sequence_score is not None
                                            else ""), file=out)
            if not stream:
                print(res.text if res.text is not None else " ".join(map(str, res.token_ids)), end="", file=out)
            print(file=out, flush=True)
            print(f"[{len(res.token_ids)} tokens, finish_reason: {res.finish_reason}]", file=sys.stderr, flush=True)
            if cfg.top_logprobs:
                print(file=out)
                _print_token_table(res.tokens, cfg.top_logprobs, out)
    return 0
