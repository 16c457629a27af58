"""``jaxgen score``: the teacher-forced logprob of every token of a text."""

from __future__ import annotations

import argparse

from jaxgen.cli.common import UserError, add_common, bounded_int, check_prompts, collect_prompts, json_line, load, quote


def add_parser(sub) -> None:
    s = sub.add_parser("score", help="teacher-forced logprob of every token of a text",
                       description="Score texts: the logprob of every token given the ones before it.")
    add_common(s)
    s.add_argument("--top-logprobs", "--top_logprobs", dest="top_logprobs", type=bounded_int(0), default=0, metavar="K",
                   help="also show the K most likely tokens at each position")
    s.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import math

    import numpy as np

    from jaxgen.api.scoring import score
    from jaxgen.text.detokenize import TokenText
    from jaxgen.text.tokenizer import encode_prompts

    prompts = collect_prompts(args)
    model, tokenizer = load(args, prompts)
    vocab = model.config.vocab_size
    if args.top_logprobs > vocab:
        raise UserError(f"--top-logprobs (top_logprobs={args.top_logprobs}) must be <= the model's vocab_size={vocab}.")
    encoded = encode_prompts(tokenizer, prompts)
    check_prompts(model, prompts, encoded)  # every text fits before the first is scored
    text_of = TokenText(tokenizer)
    for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
        s = score(model, np.asarray([ids]), top_logprobs=args.top_logprobs)
        lps = np.asarray(s.token_logprobs)[0]
        top_ids, top_lps = np.asarray(s.top_token_ids)[0], np.asarray(s.top_logprobs)[0]
        tokens = []
        for pos, tok in enumerate(ids):
            defined = not math.isnan(lps[pos])
            tokens.append(dict(id=int(tok), text=text_of(int(tok)), logprob=float(lps[pos]) if defined else None,
                               alternatives=[dict(id=int(a), text=text_of(int(a)), logprob=float(top_lps[pos, j]))
                                             for j, a in enumerate(top_ids[pos]) if a >= 0] if defined else []))
        total = float(np.nansum(lps))
        count = int(np.sum(~np.isnan(lps)))
        if args.json:
            print(json_line(dict(prompt=prompt, tokens=tokens, total_logprob=total, scored_tokens=count)), flush=True)
            continue
        if len(prompts) > 1:
            print(f"=== text {i}: {quote(prompt) if isinstance(prompt, str) else prompt}")
        w = max([5] + [len(quote(t["text"])) for t in tokens])
        print(f"{'pos':>4}  {'id':>6}  {'token'.ljust(w)}  {'logprob':>9}" +
              (f"  top-{args.top_logprobs} alternatives" if args.top_logprobs else ""))
        for pos, t in enumerate(tokens):
            lp = "-" if t["logprob"] is None else f"{t['logprob']:.4f}"
            alts = "  ".join(f"{quote(a['text'])} {a['logprob']:.4f}" for a in t["alternatives"])
            print(f"{pos:>4}  {t['id']:>6}  {quote(t['text']).ljust(w)}  {lp:>9}  {alts}".rstrip())
        ppl = math.exp(-total / count) if count else float("nan")
        print(f"total logprob {total:.4f} over {count} tokens (perplexity {ppl:.3f})", flush=True)
    return 0
