"""What a cross-check found: verdicts, tolerances, and the report as a table or JSON (never NaN)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

__all__ = ["CrosscheckReport", "ModeResult", "TOLERANCES", "Tolerances", "IDENTICAL", "NEAR_TIE", "MISMATCH",
           "NON_FINITE", "worst"]

IDENTICAL, NEAR_TIE, MISMATCH, NON_FINITE = "identical", "near-tie", "MISMATCH", "NON-FINITE"
_RANK = {IDENTICAL: 0, NEAR_TIE: 1, MISMATCH: 2, NON_FINITE: 3}


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Thresholds of the verdicts.

    ``logits``: prefill max abs logit difference; ``logprobs``: per-token logprob difference; ``tie``: a top-2
    margin (greedy, logit units) or a beam-score gap under which rounding may decide; ``sample_boundary``: a
    draw closer than this (fraction of the total probability) to a CDF boundary may round either way;
    ``beam_score``: ``sequences_scores`` difference when the sequences agree.
    """

    logits: float
    logprobs: float
    tie: float
    sample_boundary: float
    beam_score: float


# float32 figures are about 50x the differences measured on tiny random models (logits ~1e-5 of magnitude ~10);
# the half-precision ones are heuristics: both frameworks round differently, so only gross errors are flagged.
TOLERANCES = {
    "float32": Tolerances(logits=1e-3, logprobs=1e-3, tie=1e-3, sample_boundary=1e-4, beam_score=1e-4),
    "bfloat16": Tolerances(logits=0.5, logprobs=0.5, tie=0.25, sample_boundary=2e-2, beam_score=5e-2),
    "float16": Tolerances(logits=5e-2, logprobs=5e-2, tie=2e-2, sample_boundary=2e-3, beam_score=5e-3),
}


@dataclasses.dataclass
class ModeResult:
    """One prompt x mode (x seed for sampling). Token lists hold generated tokens only, EOS included."""

    prompt_index: int
    prompt: str | list[int]
    mode: str
    verdict: str
    prefill_max_abs_diff: float
    logprob_max_abs_diff: float
    jax_tokens: list[list[int]]
    hf_tokens: list[list[int]]
    seed: int | None = None
    first_divergence: int | None = None  # generated-token index of the first difference (first sequence that differs)
    notes: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def agreeing_tokens(self) -> str:
        n = sum(len(s) for s in self.hf_tokens)
        same = sum(sum(1 for a, b in zip(j, h) if a == b) for j, h in zip(self.jax_tokens, self.hf_tokens))
        return f"{same}/{n}"


@dataclasses.dataclass
class CrosscheckReport:
    model: str
    jax_model: str
    dtype: str
    max_new_tokens: int
    tolerances: Tolerances
    results: list[ModeResult]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_mismatch(self) -> bool:
        return any(r.verdict in (MISMATCH, NON_FINITE) for r in self.results)

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.results) for v in (IDENTICAL, NEAR_TIE, MISMATCH, NON_FINITE)}

    def to_dict(self) -> dict[str, Any]:
        return dict(model=self.model, jax_model=self.jax_model, dtype=self.dtype,
                    max_new_tokens=self.max_new_tokens, tolerances=dataclasses.asdict(self.tolerances),
                    settings=self.settings, summary=self.counts(), has_mismatch=self.has_mismatch,
                    results=[dict(dataclasses.asdict(r), agreeing_tokens=r.agreeing_tokens) for r in self.results])

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(_jsonable(self.to_dict()), indent=indent, allow_nan=False)

    def table(self) -> str:
        head = ["prompt", "mode", "seed", "verdict", "prefill |dlogit|", "|dlogprob|", "tokens", "first diff"]
        rows = []
        for r in self.results:
            rows.append([str(r.prompt_index), r.mode, "-" if r.seed is None else str(r.seed), r.verdict,
                         f"{r.prefill_max_abs_diff:.2e}", f"{r.logprob_max_abs_diff:.2e}", r.agreeing_tokens,
                         "-" if r.first_divergence is None else str(r.first_divergence)])
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        t = self.tolerances
        versions = self.settings.get("versions", {})
        against = " ".join(f"{k} {v}" for k, v in versions.items())
        lines = [f"crosscheck: transformers {self.model} vs jaxgen {self.jax_model}, dtype {self.dtype}, "
                 f"max_new_tokens {self.max_new_tokens}" + (f" ({against})" if against else ""),
                 f"tolerances: logits {t.logits:g}, logprobs {t.logprobs:g}, near-tie margin {t.tie:g}, "
                 f"sample CDF boundary {t.sample_boundary:g}, beam scores {t.beam_score:g}", "",
                 fmt(head), fmt(["-" * w for w in widths])]
        for r, row in zip(self.results, rows):
            lines.append(fmt(row))
            lines.extend(f"    {n}" for n in r.notes)
        c = self.counts()
        lines += ["", f"{c[IDENTICAL]} identical, {c[NEAR_TIE]} near-tie, {c[MISMATCH]} MISMATCH"
                  + (f", {c[NON_FINITE]} NON-FINITE (NaN/inf logits)" if c[NON_FINITE] else "")]
        prompts = {r.prompt_index: r.prompt for r in self.results}
        lines += ["", "prompts:"] + [f"  {i}: {json.dumps(p, ensure_ascii=False)[:120]}" for i, p in prompts.items()]
        return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def worst(*verdicts: str) -> str:
    return max(verdicts, key=_RANK.__getitem__)
