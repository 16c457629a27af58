"""What every command shares: the user-error type, argparse in the ``error: ...`` form, generation options as
flags, prompt collection, and model loading."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

from jaxgen.api.generation_config import GenerationConfig

DTYPES = ("float32", "bfloat16", "float16")


class UserError(Exception):
    """A mistake on the command line; printed as ``error: ...`` with exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors in the same "error: ..." form, exit 2
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


# --- GenerationConfig fields as flags ------------------------------------------------------------------------------

def parse_bool(text: str) -> bool:
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
        return parse_bool(text)
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


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "generation options", "every transformers-style GenerationConfig field (dashes or underscores); unset "
        "options come from the model's generation_config.json, else transformers' defaults")
    for name, spec in generation_flags().items():
        names = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*names, dest=f"gen_{name}", default=argparse.SUPPRESS, **spec)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def collect_prompts(args: argparse.Namespace, required: bool = True) -> list[Any]:
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


def load(args: argparse.Namespace, prompts: Sequence[Any], want_tokenizer: bool = True):
    """The model, and its tokenizer (None where the folder has none and no prompt is text)."""
    import jaxgen
    from jaxgen.loading import BUNDLED_MODEL
    from jaxgen.text.tokenizer import has_tokenizer, load_tokenizer

    folder = args.model or BUNDLED_MODEL
    if not os.path.isdir(folder):
        hint = "" if args.model else " (the bundled demo model is missing from this install; pass --model DIR)"
        raise UserError(f"model folder {folder} does not exist{hint}.")
    tokenizer = None
    if _needs_text(prompts) or (want_tokenizer and has_tokenizer(folder)):
        tokenizer = load_tokenizer(folder)  # before the weights: a missing tokenizer fails fast
    mesh = None
    if getattr(args, "distributed", False):
        from jaxgen.parallel.distributed import initialize

        initialize()  # before anything touches the XLA backend
    if getattr(args, "mesh", None):
        from jaxgen.parallel.sharding import make_mesh

        try:
            data, model_axis = (int(x) for x in args.mesh.split(","))
        except ValueError:
            raise UserError(f"--mesh must be DATA,MODEL (e.g. 2,4), got {args.mesh!r}.") from None
        mesh = make_mesh(data, model_axis)
    model = jaxgen.load_model(folder, dtype=args.dtype, mesh=mesh)
    return model, tokenizer


def quote(text: str | None) -> str:
    return "-" if text is None else json.dumps(text, ensure_ascii=False)


def add_common(p: argparse.ArgumentParser, model_required: bool = False) -> None:
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text (or token ids with --ids)")
    p.add_argument("--model", required=model_required, metavar="DIR",
                   help="checkpoint folder (Hugging Face or `jaxgen convert` output)" +
                        ("" if model_required else "; default: the bundled demo model"))
    p.add_argument("--prompts", dest="prompts_file", metavar="FILE",
                   help="more prompts: a JSON list, or one prompt per line")
    p.add_argument("--ids", action="store_true", help="prompts are token ids (\"1,306,4658\"); no tokenizer needed")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default float32)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
