"""Command line: ``jaxgen generate | score | convert | crosscheck``.

User mistakes (a bad flag value, a missing folder, a folder without the tokenizer that text needs, a prompts file
that does not parse, a model that cannot be loaded) print ``error: ...`` on stderr and exit with status 2, without
a traceback (set ``JAXGEN_TRACEBACK=1`` to see one). ``crosscheck`` exits with 1 when it finds a mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
import threading
from typing import Any, Callable, Sequence

from jaxgen.errors import JaxgenError
from jaxgen.generation_config import GenerationConfig

DTYPES = ("float32", "bfloat16", "float16")


class UserError(Exception):
    """A mistake on the command line; printed as ``error: ...`` with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors in the same "error: ..." form, exit 2
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


# --- GenerationConfig fields as flags ------------------------------------------------------------------------------

def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _early_stopping(text: str) -> bool | str:
    if text.lower() == "never":
        return "never"
    try:
        return _bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, false or never, got {text!r}") from None


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def wrapped(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    wrapped.__name__ = parse.__name__
    return wrapped


def _int_list(text: str) -> int | tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token id or comma-separated ids, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return values[0] if len(values) == 1 else values


# How each GenerationConfig annotation is read from the command line (a test checks that every field has a flag).
_PARSERS: dict[str, dict[str, Any]] = {
    "int": dict(type=int, metavar="N"),
    "int | None": dict(type=_optional(int), metavar="N"),
    "float": dict(type=float, metavar="X"),
    "float | None": dict(type=_optional(float), metavar="X"),
    "bool": dict(action=argparse.BooleanOptionalAction),  # --do-sample / --no-do-sample
    "bool | str": dict(type=_early_stopping, metavar="{true,false,never}"),
    "int | tuple[int, ...] | None": dict(type=_optional(_int_list), metavar="ID[,ID...]"),
}
_CHOICES = {"logprobs_mode": ("raw", "processed")}


def generation_flags() -> dict[str, dict[str, Any]]:
    """``{field name: add_argument kwargs}`` for every :class:`GenerationConfig` field."""
    flags = {}
    for f in dataclasses.fields(GenerationConfig):
        if f.name in _CHOICES:
            spec = dict(type=str, choices=_CHOICES[f.name])
        else:
            annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            if annotation not in _PARSERS:
                raise TypeError(f"GenerationConfig.{f.name}: no command-line parser for type {annotation!r}")
            spec = dict(_PARSERS[annotation])
        flags[f.name] = spec
    return flags


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "generation options", "every transformers-style GenerationConfig field (dashes or underscores); unset "
        "options come from the model's generation_config.json, else transformers' defaults")
    for name, spec in generation_flags().items():
        names = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*names, dest=f"gen_{name}", default=argparse.SUPPRESS, **spec)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("gen_")}


# --- prompts ---------------------------------------------------------------------------------------------------------

def read_prompts_file(path: str) -> list[Any]:
    """A JSON list (of strings, or of token-id lists), else one prompt per non-empty line."""
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts file {path}: {e}") from e
    stripped = content.strip()
    if not stripped:
        raise UserError(f"prompts file {path} is empty.")
    if stripped[0] in "[{":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise UserError(f"prompts file {path} starts like JSON but does not parse: {e}. Give a JSON list of "
                            "strings, or one prompt per line.") from e
        if not isinstance(data, list) or not data or not all(
                isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(x, int) for x in p))
                for p in data):
            raise UserError(f"prompts file {path}: the JSON must be a non-empty list of strings or of token-id "
                            "lists.")
        return data
    return [line for line in content.splitlines() if line.strip()]


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"--ids: prompt {text!r} is not a list of token ids (e.g. \"1, 306, 4658\").") from None
    if not ids:
        raise UserError("--ids: an empty prompt.")
    return ids


def _collect_prompts(args: argparse.Namespace, required: bool = True) -> list[Any]:
    prompts: list[Any] = list(args.prompts)
    if args.prompts_file:
        prompts += read_prompts_file(args.prompts_file)
    if args.ids:
        prompts = [p if isinstance(p, list) else _parse_ids(p) for p in prompts]
    if required and not prompts:
        raise UserError("no prompt given: pass prompts as arguments or --prompts FILE.")
    return prompts


def _needs_text(prompts: Sequence[Any]) -> bool:
    return any(isinstance(p, str) for p in prompts)


def _load(args: argparse.Namespace, prompts: Sequence[Any], want_tokenizer: bool = True):
    """The model, and its tokenizer (None where the folder has none and no prompt is text)."""
    import jaxgen
    from jaxgen.loading import BUNDLED_MODEL
    from jaxgen.tokenizer import has_tokenizer, load_tokenizer

    folder = args.model or BUNDLED_MODEL
    if not os.path.isdir(folder):
        hint = "" if args.model else " (the bundled demo model is missing from this install; pass --model DIR)"
        raise UserError(f"model folder {folder} does not exist{hint}.")
    tokenizer = None
    if _needs_text(prompts) or (want_tokenizer and has_tokenizer(folder)):
        tokenizer = load_tokenizer(folder)  # before the weights: a missing tokenizer fails fast
    mesh = None
    if getattr(args, "distributed", False):
        from jaxgen.distributed import initialize

        initialize()  # before anything touches the XLA backend
    if getattr(args, "mesh", None):
        from jaxgen.sharding import make_mesh

        try:
            data, model_axis = (int(x) for x in args.mesh.split(","))
        except ValueError:
            raise UserError(f"--mesh must be DATA,MODEL (e.g. 2,4), got {args.mesh!r}.") from None
        mesh = make_mesh(data, model_axis)
    model = jaxgen.load_model(folder, dtype=args.dtype, mesh=mesh)
    return model, tokenizer


def _q(text: str | None) -> str:
    return "-" if text is None else json.dumps(text, ensure_ascii=False)


# --- generate --------------------------------------------------------------------------------------------------------

def _print_token_table(tokens, k: int, out) -> None:
    rows = [(_q(t.text), f"{t.logprob:.4f}",
             "  ".join(f"{_q(a.text)} {a.logprob:.4f}" for a in t.alternatives[:k])) for t in tokens]
    w0 = max([5] + [len(r[0]) for r in rows])
    print(f"{'token'.ljust(w0)}  {'logprob':>9}  top-{k} alternatives", file=out)
    for tok, lp, alts in rows:
        print(f"{tok.ljust(w0)}  {lp:>9}  {alts}", file=out)


def _cmd_generate(args: argparse.Namespace) -> int:
    import jax

    from jaxgen.generate import resolve_config
    from jaxgen.tokenizer import generate_text

    prompts = _collect_prompts(args)
    if args.stream_every < 1:
        raise UserError(f"--stream-every must be >= 1, got {args.stream_every}.")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"seed: {seed}", file=sys.stderr, flush=True)
    model, tokenizer = _load(args, prompts)
    cfg = resolve_config(model, None, _overrides(args))  # validates every option before anything compiles
    base = jax.random.key(seed)
    out = sys.stdout if jax.process_index() == 0 else open(os.devnull, "w")  # multi-host: process 0 writes
    lock = threading.Lock()
    for i, prompt in enumerate(prompts):
        # Prompt i always samples with fold_in(key(seed), i): the same seed repeats any prompt of the run.
        key = jax.random.fold_in(base, i)[None]
        stream = not args.json and tokenizer is not None and cfg.num_return_sequences == 1 and cfg.num_beams == 1
        if not args.json and len(prompts) > 1:
            print(f"=== prompt {i}: {_q(prompt) if isinstance(prompt, str) else prompt}", file=out, flush=True)
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


# --- score -----------------------------------------------------------------------------------------------------------

def _cmd_score(args: argparse.Namespace) -> int:
    import math

    import numpy as np

    from jaxgen.scoring import score
    from jaxgen.tokenizer import _TokenText, encode_prompts

    prompts = _collect_prompts(args)
    if args.top_logprobs < 0:
        raise UserError(f"--top-logprobs must be >= 0, got {args.top_logprobs}.")
    model, tokenizer = _load(args, prompts)
    text_of = _TokenText(tokenizer)
    for i, (prompt, ids) in enumerate(zip(prompts, encode_prompts(tokenizer, prompts))):
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
            print(json.dumps(dict(prompt=prompt, tokens=tokens, total_logprob=total, scored_tokens=count),
                             ensure_ascii=False), flush=True)
            continue
        if len(prompts) > 1:
            print(f"=== text {i}: {_q(prompt) if isinstance(prompt, str) else prompt}")
        w = max([5] + [len(_q(t["text"])) for t in tokens])
        print(f"{'pos':>4}  {'id':>6}  {'token'.ljust(w)}  {'logprob':>9}" +
              (f"  top-{args.top_logprobs} alternatives" if args.top_logprobs else ""))
        for pos, t in enumerate(tokens):
            lp = "-" if t["logprob"] is None else f"{t['logprob']:.4f}"
            alts = "  ".join(f"{_q(a['text'])} {a['logprob']:.4f}" for a in t["alternatives"])
            print(f"{pos:>4}  {t['id']:>6}  {_q(t['text']).ljust(w)}  {lp:>9}  {alts}".rstrip())
        ppl = math.exp(-total / count) if count else float("nan")
        print(f"total logprob {total:.4f} over {count} tokens (perplexity {ppl:.3f})", flush=True)
    return 0


# --- crosscheck ------------------------------------------------------------------------------------------------------

DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, there was a")


def _cmd_crosscheck(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from jaxgen.crosscheck import compare
    from jaxgen.tokenizer import has_tokenizer

    hf_logging.disable_progress_bar()  # keep the terminal for the report
    if not os.path.isdir(args.model):
        raise UserError(f"model folder {args.model} does not exist.")
    prompts = _collect_prompts(args, required=False)
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


# --- entry point -----------------------------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser, model_required: bool = False) -> None:
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text (or token ids with --ids)")
    p.add_argument("--model", required=model_required, metavar="DIR",
                   help="checkpoint folder (Hugging Face or `jaxgen convert` output)" +
                        ("" if model_required else "; default: the bundled demo model"))
    p.add_argument("--prompts", dest="prompts_file", metavar="FILE",
                   help="more prompts: a JSON list, or one prompt per line")
    p.add_argument("--ids", action="store_true", help="prompts are token ids (\"1,306,4658\"); no tokenizer needed")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default float32)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxgen", description="LLM generation in JAX with transformers parity.")
    sub = parser.add_subparsers(dest="command", metavar="{generate,score,convert,crosscheck}", parser_class=_Parser)
    sub.required = True

    g = sub.add_parser("generate", help="generate text (streams to stdout)",
                       description="Generate continuations; text streams to stdout, the seed goes to stderr.")
    _add_common(g)
    g.add_argument("--seed", type=int, help="sampling seed (default: a random one, printed to stderr)")
    g.add_argument("--mesh", metavar="DATA,MODEL", help="run on a device mesh, e.g. 2,4 (batch over DATA, tensor "
                                                         "parallel over MODEL)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() first (see README); process 0 prints")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    g.add_argument("--stream-every", "--stream_every", dest="stream_every", type=int, default=4, metavar="K",
                   help="hand text to the terminal every K tokens (default 4)")
    _add_generation_flags(g)

    s = sub.add_parser("score", help="teacher-forced logprob of every token of a text",
                       description="Score texts: the logprob of every token given the ones before it.")
    _add_common(s)
    s.add_argument("--top-logprobs", "--top_logprobs", dest="top_logprobs", type=int, default=0, metavar="K",
                   help="also show the K most likely tokens at each position")

    sub.add_parser("convert", help="convert a Hugging Face checkpoint (HF_DIR OUT_DIR [--dtype D] [--quiet])",
                   add_help=False)

    c = sub.add_parser("crosscheck", help="compare jaxgen with transformers on the same checkpoint",
                       description="Run transformers (PyTorch) and jaxgen on the same prompts and compare logits, "
                                   "logprobs and tokens. Exit status 1 on any MISMATCH.")
    _add_common(c, model_required=True)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxgen``; returns the exit status (0 ok, 1 crosscheck mismatch, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        from checkpoints_convert.cli import main as convert_main

        try:
            return convert_main(argv[1:])
        except SystemExit as e:
            return int(e.code or 0)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse error (2, already printed)
        return int(e.code or 0)
    commands = {"generate": _cmd_generate, "score": _cmd_score, "crosscheck": _cmd_crosscheck}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`jaxgen generate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UserError, JaxgenError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("JAXGEN_TRACEBACK"):
            raise
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return 2
