"""``jaxgen generate``: continuations streamed to stdout (or ``--json`` records), the seed (when sampling) on
stderr."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading

from jaxgen.api.presets import PRESETS, preset
from jaxgen.cli.common import (SEED_LIMIT, UserError, add_common, add_generation_flags, bounded_int, check_prompts,
                               collect_prompts, json_line, load, overrides, parse_mesh, quote, seed_int)


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate text (streams to stdout)",
                       description="Generate continuations; text streams to stdout, the seed (when sampling) goes "
                                   "to stderr.")
    add_common(g)
    g.add_argument("--seed", type=seed_int, help="sampling seed, 0 <= seed < 2**32 (default: a random one, printed to "
                                                 "stderr when sampling)")
    g.add_argument("--mesh", metavar="DATA,MODEL", type=parse_mesh,
                   help="run on a device mesh, e.g. 2,4 (batch over DATA, tensor parallel over MODEL)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() first (see README); process 0 prints")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    g.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image for every prompt (repeat for several); the checkpoint's processor prepares it and "
                        "its chat template places it before the prompt text (Gemma 3, MiniCPM-V 4.6)")
    g.add_argument("--stream-every", "--stream_every", dest="stream_every", type=bounded_int(1), default=4,
                   metavar="K", help="hand text to the terminal every K tokens (default 4)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named settings: omnilmm = OmniLMM's deterministic mode (beam search, 3 beams, repetition "
                        "penalty 1.2); omnilmm-sampling = its sampling mode (top-p 0.8, top-k 100, temperature 0.7, "
                        "repetition penalty 1.05; seeded with --seed). Other options apply on top")
    add_generation_flags(g)
    g.set_defaults(run=run)


def _print_token_table(tokens, k: int, out) -> None:
    rows = [(quote(t.text), f"{t.logprob:.4f}",
             "  ".join(f"{quote(a.text)} {a.logprob:.4f}" for a in t.alternatives[:k])) for t in tokens]
    w0 = max([5] + [len(r[0]) for r in rows])
    print(f"{'token'.ljust(w0)}  {'logprob':>9}  top-{k} alternatives", file=out)
    for tok, lp, alts in rows:
        print(f"{tok.ljust(w0)}  {lp:>9}  {alts}", file=out)


def _with_tokenizer_pad(cfg, tokenizer, vocab_size: int):
    """The tokenizer's pad id where the config has none (what generate_text would use), checked now: a pad token
    added to a tokenizer without resizing the embeddings has an id the model does not have."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if cfg.pad_token_id is not None or pad is None:
        return cfg
    if not 0 <= pad < vocab_size:
        raise UserError(f"the tokenizer's pad token id {pad} is not a token of the model (vocab_size={vocab_size}): "
                        "it was added to the tokenizer without resizing the embeddings. Pass --pad-token-id with an "
                        "existing id (e.g. the EOS id), or resize the embeddings and reconvert.")
    return cfg.replace(pad_token_id=int(pad))


def run(args: argparse.Namespace) -> int:
    import jax

    from jaxgen.api.generate import resolve_config
    from jaxgen.text.generate_text import generate_text
    from jaxgen.text.tokenizer import encode_prompts

    prompts = collect_prompts(args)
    images, processor = None, None
    if args.image:  # read and checked before the weights load
        from jaxgen.loading import resolve_model_path
        from jaxgen.text.images import encode_with_images, load_images, load_processor

        if args.ids:
            raise UserError("--image needs text prompts (the chat template places the images); drop --ids.")
        images = load_images(args.image)
        processor = load_processor(resolve_model_path(args.model))
    model, tokenizer = load(args, prompts)
    if images is not None and model.config.vision is None:
        raise UserError(f"--image: this {model.config.wrapper or model.config.model_type} model reads no images "
                        "(jaxgen reads the images of gemma3 and minicpmv4_6 checkpoints).")
    options = {**(preset(args.preset) if args.preset else {}), **overrides(args)}  # flags win over a preset
    cfg = resolve_config(model, None, options)  # validates every option before anything compiles
    cfg = _with_tokenizer_pad(cfg, tokenizer, model.config.vocab_size)
    if images is None:
        encoded = encode_prompts(tokenizer, prompts, chat=args.chat)
    else:
        encoded = []  # the processor's tokens, image placeholders included, for the length checks
        for p in prompts:
            x = encode_with_images(processor, [p], images)
            encoded.append(x["input_ids"][0][x["attention_mask"][0] == 1].tolist())
    check_prompts(model, prompts, encoded)
    if cfg.max_new_tokens is None:  # transformers' max_length rule: prompt + new tokens
        for i, ids in enumerate(encoded):
            if len(ids) >= cfg.max_length:
                raise UserError(f"prompt {i} has {len(ids)} tokens, which leaves no room under max_length="
                                f"{cfg.max_length}; set --max-new-tokens N.")
    # Greedy and beam search do not use a key: no seed to report or repeat.
    seed = None
    if cfg.do_sample:
        seed = args.seed if args.seed is not None else secrets.randbelow(SEED_LIMIT)
        print(f"seed: {seed}", file=sys.stderr, flush=True)
    base = None if seed is None else jax.random.key(seed)
    echoed = cfg.to_dict()
    if cfg.max_new_tokens is not None:
        del echoed["max_length"]  # not used when max_new_tokens is set (transformers' rule)
    out = sys.stdout if jax.process_index() == 0 else open(os.devnull, "w")  # multi-host: process 0 writes
    lock = threading.Lock()
    for i, prompt in enumerate(prompts):
        # Prompt i always samples with fold_in(key(seed), i): the same seed repeats any prompt of the run.
        key = None if base is None else jax.random.fold_in(base, i)[None]
        stream = not args.json and tokenizer is not None and cfg.num_return_sequences == 1 and cfg.num_beams == 1
        if not args.json and len(prompts) > 1:
            print(f"=== prompt {i}: {quote(prompt) if isinstance(prompt, str) else prompt}", file=out, flush=True)
        # Show the prompt then its continuation, as a person reads it (not for --json, chat or several returns).
        echo = (not args.json and not args.chat and images is None and isinstance(prompt, str)
                and cfg.num_return_sequences == 1)
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
                                streamer=streamer if stream else None, stream_every=args.stream_every,
                                images=images, processor=processor)
        for r, res in enumerate(results):
            if args.json:
                record = dict(seed=seed, config=echoed, prompt=res.prompt, **{
                    k: v for k, v in res.to_dict().items() if k != "prompt"})
                if cfg.num_return_sequences > 1:
                    record["sequence_index"] = r
                if res.sequence_score is not None:
                    record["sequence_score"] = res.sequence_score
                print(json_line(record), file=out, flush=True)
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
