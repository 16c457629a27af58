"""What every command shares: the user-error type, argparse in the ``error: ...`` form, generation options as
flags, prompt collection, and model loading."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any, Callable, Sequence

from jaxgen.api.generation_config import GenerationConfig

DTYPES = ("float32", "bfloat16", "float16")
INT32_LIMIT = 2**31  # counts and sizes are int32 in the compiled program
# jax.random.key keeps only a seed's low 32 bits (without jax_enable_x64): 2**32 would repeat seed 0.
SEED_LIMIT = 2**32


class UserError(Exception):
    """A mistake on the command line; printed as ``error: ...`` with exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors in the same "error: ..." form, exit 2
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


# --- flag values ---------------------------------------------------------------------------------------------------

def bounded_int(low: int, high: int = INT32_LIMIT, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer in [low, high) (plain ``int`` would let 3000000000 reach int32 code)."""
    shown = "2**31" if high == INT32_LIMIT else "2**32" if high == SEED_LIMIT else str(high)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"must be >= {low} and < {shown}{why}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


seed_int = bounded_int(0, SEED_LIMIT, " (jax.random.key uses a seed's low 32 bits)")


def parse_mesh(text: str) -> tuple[int, int]:
    """``--mesh DATA,MODEL``: two integers >= 1."""
    parts = [x.strip() for x in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected DATA,MODEL (two integers, e.g. 2,4), got {text!r}")
    sizes = []
    for axis, part in zip(("data", "model"), parts):
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the {axis} axis must be an integer >= 1, got {part!r}") from None
        if not 1 <= size < INT32_LIMIT:
            raise argparse.ArgumentTypeError(f"the {axis} axis must be >= 1, got {size}")
        sizes.append(size)
    return sizes[0], sizes[1]


def json_line(record: Any) -> str:
    """One JSON line without NaN/Infinity (not JSON; many parsers reject them): non-finite floats become null."""
    def finite(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x

    return json.dumps(finite(record), ensure_ascii=False, allow_nan=False)


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


def _ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None


def _json_or(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected {what}; {text!r} is not valid JSON ({e})") from None


def _id_lists(text: str) -> tuple[tuple[int, ...], ...]:
    """``--bad-words-ids "5;7,8"`` (sequences separated by ``;``) or JSON ``[[5], [7, 8]]``."""
    if text.lstrip().startswith("["):
        return _json_or(text, "a JSON list of token-id lists")  # GenerationConfig.validate judges the shape
    lists = tuple(_ids(part) for part in text.split(";"))
    if not all(lists):
        raise argparse.ArgumentTypeError(f"expected token-id sequences separated by ';' (e.g. 5;7,8), got {text!r}")
    return lists


def _sequence_bias(text: str) -> Any:
    """``--sequence-bias "7,8=-2.5;9=1"`` or JSON ``[[[7, 8], -2.5], [[9], 1.0]]``."""
    if text.lstrip().startswith("["):
        return _json_or(text, "a JSON list of [token ids, bias] pairs")
    pairs = []
    for part in text.split(";"):
        ids, sep, bias = part.rpartition("=")
        try:
            pairs.append((_ids(ids), float(bias)))
        except ValueError:
            sep = ""
        if not sep or not pairs[-1][0]:
            raise argparse.ArgumentTypeError(f"expected IDS=BIAS pairs separated by ';' (e.g. 7,8=-2.5;9=1), "
                                             f"got {text!r}")
    return tuple(pairs)


def _decay(text: str) -> tuple[int, float]:
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return int(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected START,FACTOR (e.g. 10,1.05), got {text!r}")


def _stop_strings(text: str) -> str | tuple[str, ...]:
    """One stop string, or a JSON list of them (``'["\\n\\n", "###"]'``)."""
    if text.lstrip().startswith("["):
        value = _json_or(text, "a JSON list of strings")
        return tuple(value) if isinstance(value, list) else value
    return text


# How each GenerationConfig annotation is read from the command line (a test checks that every field has a flag).
_PARSERS: dict[str, dict[str, Any]] = {
    "int": dict(type=int, metavar="N"),
    "int | None": dict(type=_optional(int), metavar="N"),
    "float": dict(type=float, metavar="X"),
    "float | None": dict(type=_optional(float), metavar="X"),
    "bool": dict(action=argparse.BooleanOptionalAction),  # --do-sample / --no-do-sample
    "bool | str": dict(type=_early_stopping, metavar="{true,false,never}"),
    "int | tuple[int, ...] | None": dict(type=_optional(_int_list), metavar="ID[,ID...]"),
    "tuple[int, ...] | None": dict(type=_optional(_ids), metavar="ID[,ID...]"),
    "tuple[tuple[int, ...], ...] | None": dict(type=_optional(_id_lists), metavar="IDS[;IDS...]"),
    "tuple[tuple[tuple[int, ...], float], ...] | None": dict(type=_optional(_sequence_bias),
                                                             metavar="IDS=BIAS[;IDS=BIAS...]"),
    "tuple[int, float] | None": dict(type=_optional(_decay), metavar="START,FACTOR"),
    "str | tuple[str, ...] | None": dict(type=_stop_strings, metavar="TEXT|JSON_LIST"),
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
                isinstance(p, str) or (isinstance(p, list) and p and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in p)) for p in data):
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
    from jaxgen.loading import resolve_model_path
    from jaxgen.text.tokenizer import has_tokenizer, load_tokenizer

    folder = resolve_model_path(args.model)  # a folder, a Hub id in the local cache, or the bundled model
    tokenizer = None
    if _needs_text(prompts) or (want_tokenizer and has_tokenizer(folder)):
        tokenizer = load_tokenizer(folder)  # before the weights: a missing tokenizer fails fast
    mesh = None
    if getattr(args, "distributed", False):
        from jaxgen.parallel.distributed import initialize

        initialize()  # before anything touches the XLA backend
    if getattr(args, "mesh", None):
        from jaxgen.parallel.sharding import make_mesh

        data, model_axis = args.mesh if isinstance(args.mesh, tuple) else parse_mesh(args.mesh)
        mesh = make_mesh(data, model_axis)
    model = jaxgen.load_model(folder, dtype=args.dtype, mesh=mesh)
    return model, tokenizer


def check_prompts(model, prompts: Sequence[Any], encoded: Sequence[Sequence[int]]) -> None:
    """Every prompt fits the model (length, token ids), checked before anything runs: a bad prompt late in a
    prompts file must not fail after earlier results were printed."""
    context, vocab = model.config.max_position_embeddings, model.config.vocab_size
    for i, ids in enumerate(encoded):
        name = f"prompt {i}" + (f" ({_short(prompts[i])})" if len(prompts) > 1 else "")
        if len(ids) > context:
            raise UserError(f"{name} has {len(ids)} tokens, longer than the model's context "
                            f"(max_position_embeddings={context}); shorten it.")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise UserError(f"{name} has token ids outside [0, vocab_size={vocab}): {bad[:5]}.")


def _short(prompt: Any) -> str:
    text = quote(prompt) if isinstance(prompt, str) else str(prompt)
    return text if len(text) <= 40 else text[:37] + "..."


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
