"""Per-family tables between Hugging Face state-dict keys and jaxgen parameter names, with named transforms.

A :class:`Rule` pairs an HF key template with one jaxgen name template (``{i}`` is a layer index; other slots are
the alternatives in ``SLOTS``), plus a transform: linear weights go from torch's ``[out, in]`` to flax's
``[in, out]``. A rule with several names is a split: the HF tensor is the concatenation of those parameters (in
HF layout) along ``axis`` (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``), so every jaxgen
parameter is one unfused tensor and a tensor-parallel slice never cuts across fused blocks. The part sizes come
from the config's shape table, and the whole tensor must be exactly their concatenation. The same rules read
backwards give the export direction (jaxgen names -> HF key, parts merged).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """torch ``Linear.weight [out, in]`` <-> flax ``Linear.kernel [in, out]`` (contiguous, so jax copies once)."""
    return np.ascontiguousarray(x.T)


# Named so that a table stays data, and so shape checks know how each transform moves dimensions.
def swap_last(x: np.ndarray) -> np.ndarray:
    """Stacked torch weights ``[E, out, in]`` <-> stacked kernels ``[E, in, out]`` (transformers 5 fused experts)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"identity": identity, "transpose": transpose,
                                                             "swap_last": swap_last}
SHAPE_OF: dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {
    "identity": lambda s: s,
    "transpose": lambda s: s[::-1],
    "swap_last": lambda s: s[:-2] + s[-1:] + s[-2:-1],
}
# The transform that undoes each one (for export). All used today are their own inverses.
INVERSE: dict[str, str] = {"identity": "identity", "transpose": "transpose", "swap_last": "swap_last"}

# What each template slot may stand for.
SLOTS: dict[str, str] = {
    "i": r"\d+",
    "e": r"\d+",  # an expert's index in a per-expert checkpoint (a stacking rule)
    "attn": r"[qkvo]_proj",
    "mlp": r"(?:gate|up|down)_proj",
    "norm": r"input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm"
            r"|post_feedforward_layernorm_1|pre_feedforward_layernorm_2|post_feedforward_layernorm_2",  # Gemma 4 MoE
    "qk": r"[qk]_norm",
    "ple": r"per_layer_input_gate|per_layer_projection",  # Gemma 4 per-layer input linears
    "leaf": r"weight|bias",
    "lin": r"in_proj_(?:qkv|z|a|b)|out_proj",  # Qwen3.5 Gated DeltaNet projections
    "lin_p": r"conv1d\.weight|dt_bias|A_log|norm\.weight",  # ... and its other parameters, kept as they are
    # GPT2LMHeadModel saves "transformer.h.0..."; the Hub's original GPT-2 files (GPT2Model) have no prefix.
    "gpt2": r"(?:transformer\.)?",
    "mla": r"q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj",  # DeepSeek-V3 latent attention projections
    "mla_norm": r"q_a_layernorm|kv_a_layernorm",
}
# A slot an HF template has but the jaxgen name does not: the value export writes.
SLOT_DEFAULTS: dict[str, str] = {"gpt2": "transformer."}


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, slot, literal, slot, ...
    return re.compile("".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{SLOTS[p]})" for k, p in enumerate(parts)))


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF key ``hf`` <-> jaxgen name(s) ``names``; ``transform`` turns the HF tensor (each part of it, for a split
    along ``axis``) into jaxgen's, ``INVERSE[transform]`` turns it back."""

    hf: str
    names: tuple[str, ...] | str
    transform: str
    axis: int = 0
    stack: bool = False  # HF has one tensor per expert {e}; jaxgen's parameter stacks them on a leading axis
    interleave: bool = False  # a split whose parts alternate along `axis` (gpt-oss gate_up_proj: gate, up, gate...)
    # a split whose parts are scattered along `axis` in a config-dependent order: REGROUPS[regroup](config) gives
    # each part's indices (Qwen3-Next's in_proj_qkvz, grouped per key head)
    regroup: str | None = None
    hf_pattern: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)
    patterns: tuple[re.Pattern, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        assert self.transform in TRANSFORMS and self.transform in INVERSE, self.transform
        # Frozen: the normalised names and compiled patterns are derived once, here.
        if isinstance(self.names, str):
            object.__setattr__(self, "names", (self.names,))
        object.__setattr__(self, "hf_pattern", _compile(self.hf))
        object.__setattr__(self, "patterns", tuple(_compile(n) for n in self.names))


@dataclasses.dataclass(frozen=True)
class Piece:
    """One jaxgen parameter cut from an HF tensor: ``part = (axis, start, stop, step)`` of it, or ``(axis,
    indices)`` for a regrouped split (None: all of it), then ``transform``."""

    target: str
    transform: str
    part: tuple | None = None
    index: int | None = None  # a stacking rule's slot: this tensor is ``target[index]``


def _qwen3_next_groups(config, widths: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Qwen3-Next fuses its Gated DeltaNet projections per key head: ``in_proj_qkvz`` rows are, for each of the
    ``nk`` key heads, ``[q (dk) | k (dk) | v (r * dv) | z (r * dv)]`` with ``r = nv / nk``, and ``in_proj_ba`` rows
    ``[b (r) | a (r)]``. Qwen3.5's (and jaxgen's) layout is ``[all q | all k | all v]``, ``z``, ``b``, ``a``: the
    row indices of each of those parts, for the part names in ``widths`` ("q", "k", "v", "z" / "b", "a"; a name of
    several letters is their concatenation)."""
    lin = next(spec.linear for spec in config.layers if spec.linear is not None)
    nk, r = lin.num_k_heads, lin.num_v_heads // lin.num_k_heads
    if set("".join(widths)) <= set("ba"):
        sizes = {"b": r, "a": r}
    else:
        sizes = {"q": lin.k_head_dim, "k": lin.k_head_dim, "v": r * lin.v_head_dim, "z": r * lin.v_head_dim}
    order = "ba" if "b" in sizes else "qkvz"
    width = sum(sizes.values())
    start = {c: sum(sizes[o] for o in order[:order.index(c)]) for c in order}
    return [tuple(g * width + start[c] + j for c in part for g in range(nk) for j in range(sizes[c]))
            for part in widths]


# name -> (config, part names) -> each part's indices along the rule's axis
REGROUPS: dict[str, Callable] = {
    "qwen3_next_qkvz": lambda config: _qwen3_next_groups(config, ("qkv", "z")),
    "qwen3_next_ba": lambda config: _qwen3_next_groups(config, ("b", "a")),
}


_L = "model.layers.{i}"
# Llama, Mistral, Qwen2, Qwen3 and Gemma 1/2/3 share one layout; biases, q/k norms and Gemma's extra norms exist
# only where the config says so, which the shape check against `shapes.param_shapes(config)` enforces (an
# unexpected tensor is an unused one).
LLAMA_RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens.weight", "model.embed_tokens.embedding", "identity"),
    Rule(f"{_L}.self_attn.{{attn}}.weight", f"{_L}.self_attn.{{attn}}.kernel", "transpose"),
    Rule(f"{_L}.self_attn.{{attn}}.bias", f"{_L}.self_attn.{{attn}}.bias", "identity"),
    Rule(f"{_L}.mlp.{{mlp}}.weight", f"{_L}.mlp.{{mlp}}.kernel", "transpose"),
    Rule(f"{_L}.mlp.{{mlp}}.bias", f"{_L}.mlp.{{mlp}}.bias", "identity"),
    Rule(f"{_L}.{{norm}}.weight", f"{_L}.{{norm}}.weight", "identity"),
    Rule(f"{_L}.self_attn.{{qk}}.weight", f"{_L}.self_attn.{{qk}}.weight", "identity"),
    Rule("model.norm.weight", "model.norm.weight", "identity"),
    Rule("lm_head.weight", "lm_head.kernel", "transpose"),
)

# GPT-2: Conv1D weights are already [in, out] (no transpose); c_attn is q, k and v side by side on the out axis.
_H = "{gpt2}h.{i}"
GPT2_RULES: tuple[Rule, ...] = (
    Rule("{gpt2}wte.weight", "model.embed_tokens.embedding", "identity"),
    Rule("{gpt2}wpe.weight", "model.embed_positions.embedding", "identity"),
    Rule(f"{_H}.ln_1.{{leaf}}", f"{_L}.input_layernorm.{{leaf}}", "identity"),
    Rule(f"{_H}.ln_2.{{leaf}}", f"{_L}.post_attention_layernorm.{{leaf}}", "identity"),
    Rule(f"{_H}.attn.c_attn.weight", tuple(f"{_L}.self_attn.{p}_proj.kernel" for p in "qkv"), "identity", axis=1),
    Rule(f"{_H}.attn.c_attn.bias", tuple(f"{_L}.self_attn.{p}_proj.bias" for p in "qkv"), "identity", axis=0),
    Rule(f"{_H}.attn.c_proj.weight", f"{_L}.self_attn.o_proj.kernel", "identity"),
    Rule(f"{_H}.attn.c_proj.bias", f"{_L}.self_attn.o_proj.bias", "identity"),
    Rule(f"{_H}.mlp.c_fc.weight", f"{_L}.mlp.up_proj.kernel", "identity"),
    Rule(f"{_H}.mlp.c_fc.bias", f"{_L}.mlp.up_proj.bias", "identity"),
    Rule(f"{_H}.mlp.c_proj.weight", f"{_L}.mlp.down_proj.kernel", "identity"),
    Rule(f"{_H}.mlp.c_proj.bias", f"{_L}.mlp.down_proj.bias", "identity"),
    Rule("{gpt2}ln_f.{leaf}", "model.norm.{leaf}", "identity"),
    Rule("lm_head.weight", "lm_head.kernel", "transpose"),
)

# Phi-3: Llama's layout with q/k/v fused into qkv_proj and gate/up into gate_up_proj (torch Linear: parts stacked
# on the out axis, 0; gate first, as Phi3MLP's chunk(2) reads it). First, so that export finds the fused keys
# before Llama's per-projection rules.
PHI3_RULES: tuple[Rule, ...] = (
    Rule(f"{_L}.self_attn.qkv_proj.weight", tuple(f"{_L}.self_attn.{p}_proj.kernel" for p in "qkv"), "transpose"),
    Rule(f"{_L}.mlp.gate_up_proj.weight", (f"{_L}.mlp.gate_proj.kernel", f"{_L}.mlp.up_proj.kernel"), "transpose"),
) + LLAMA_RULES

# MoE (Mixtral, Qwen2/3-MoE): experts stacked [E, in, out]. transformers 5 holds them fused in memory
# (gate_up_proj [E, 2 * inter, hidden], gate first; down_proj [E, hidden, inter]) but save_pretrained writes the
# per-expert layout (Mixtral: block_sparse_moe.experts.{e}.w1/w3/w2 = gate/up/down); both are read. The fused
# rules come first, so that export writes the fused form.
_X = f"{_L}.mlp.experts"
MOE_RULES: tuple[Rule, ...] = (
    Rule(f"{_X}.gate_up_proj", (f"{_X}.gate_proj", f"{_X}.up_proj"), "swap_last", axis=1),
    Rule(f"{_X}.down_proj", f"{_X}.down_proj", "swap_last"),
    Rule(f"{_X}.{{e}}.{{mlp}}.weight", f"{_X}.{{mlp}}", "transpose", stack=True),
    Rule(f"{_L}.block_sparse_moe.experts.{{e}}.w1.weight", f"{_X}.gate_proj", "transpose", stack=True),
    Rule(f"{_L}.block_sparse_moe.experts.{{e}}.w3.weight", f"{_X}.up_proj", "transpose", stack=True),
    Rule(f"{_L}.block_sparse_moe.experts.{{e}}.w2.weight", f"{_X}.down_proj", "transpose", stack=True),
    Rule(f"{_L}.mlp.gate.weight", f"{_L}.mlp.gate.kernel", "transpose"),  # first: export writes transformers 5's
    Rule(f"{_L}.block_sparse_moe.gate.weight", f"{_L}.mlp.gate.kernel", "transpose"),
    Rule(f"{_L}.mlp.shared_expert.{{mlp}}.weight", f"{_L}.mlp.shared_expert.{{mlp}}.kernel", "transpose"),
    Rule(f"{_L}.mlp.shared_expert_gate.weight", f"{_L}.mlp.shared_expert_gate.kernel", "transpose"),
) + LLAMA_RULES

# Qwen3.5 text: Llama's layout (the full-attention q_proj holds [q | gate] per head, unsplit: one tensor) plus the
# linear_attn layers; conv1d.weight stays torch's depthwise [C, 1, K].
QWEN3_5_RULES: tuple[Rule, ...] = (
    Rule(f"{_L}.linear_attn.{{lin}}.weight", f"{_L}.linear_attn.{{lin}}.kernel", "transpose"),
    Rule(f"{_L}.linear_attn.{{lin_p}}", f"{_L}.linear_attn.{{lin_p}}", "identity"),
) + LLAMA_RULES

# Qwen3.5-MoE text: the linear_attn layers plus the MoE layout (routed experts, shared expert and its gate).
QWEN3_5_MOE_RULES: tuple[Rule, ...] = QWEN3_5_RULES[:2] + MOE_RULES

# Qwen3-Next: Qwen3.5's hybrid layers with the Gated DeltaNet inputs fused per key head (regrouped into Qwen3.5's
# layout at conversion), and the Qwen MoE layout (sparse layers, shared expert, dense layers).
_LA = f"{_L}.linear_attn"
QWEN3_NEXT_RULES: tuple[Rule, ...] = (
    Rule(f"{_LA}.in_proj_qkvz.weight", (f"{_LA}.in_proj_qkv.kernel", f"{_LA}.in_proj_z.kernel"), "transpose",
         regroup="qwen3_next_qkvz"),
    Rule(f"{_LA}.in_proj_ba.weight", (f"{_LA}.in_proj_b.kernel", f"{_LA}.in_proj_a.kernel"), "transpose",
         regroup="qwen3_next_ba"),
    Rule(f"{_LA}.out_proj.weight", f"{_LA}.out_proj.kernel", "transpose"),
    QWEN3_5_RULES[1],
) + MOE_RULES

# Gemma 4 text: Gemma's layout plus per-layer inputs and each layer's scalar (a buffer transformers saves).
GEMMA4_RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens_per_layer.weight", "model.embed_tokens_per_layer.embedding", "identity"),
    Rule("model.per_layer_model_projection.weight", "model.per_layer_model_projection.kernel", "transpose"),
    Rule("model.per_layer_projection_norm.weight", "model.per_layer_projection_norm.weight", "identity"),
    Rule(f"{_L}.{{ple}}.weight", f"{_L}.{{ple}}.kernel", "transpose"),
    Rule(f"{_L}.post_per_layer_input_norm.weight", f"{_L}.post_per_layer_input_norm.weight", "identity"),
    Rule(f"{_L}.layer_scalar", f"{_L}.layer_scalar", "identity"),
    # enable_moe_block: transformers' `router` and `experts` are jaxgen's `moe` (beside the dense `mlp`)
    Rule(f"{_L}.router.proj.weight", f"{_L}.moe.gate.kernel", "transpose"),
    Rule(f"{_L}.router.scale", f"{_L}.moe.router_scale", "identity"),
    Rule(f"{_L}.router.per_expert_scale", f"{_L}.moe.per_expert_scale", "identity"),
    Rule(f"{_L}.experts.gate_up_proj", (f"{_L}.moe.experts.gate_proj", f"{_L}.moe.experts.up_proj"), "swap_last",
         axis=1),
    Rule(f"{_L}.experts.down_proj", f"{_L}.moe.experts.down_proj", "swap_last"),
) + LLAMA_RULES

# DeepSeek-V3: the MoE layout (experts per expert on disk, fused in transformers 5's memory) plus latent attention
# (q_proj and o_proj as Llama's), a routing bias and ungated `shared_experts`.
DEEPSEEK_RULES: tuple[Rule, ...] = (
    Rule(f"{_L}.self_attn.{{mla}}.weight", f"{_L}.self_attn.{{mla}}.kernel", "transpose"),
    Rule(f"{_L}.self_attn.{{mla}}.bias", f"{_L}.self_attn.{{mla}}.bias", "identity"),
    Rule(f"{_L}.self_attn.{{mla_norm}}.weight", f"{_L}.self_attn.{{mla_norm}}.weight", "identity"),
    Rule(f"{_L}.mlp.gate.e_score_correction_bias", f"{_L}.mlp.gate.e_score_correction_bias", "identity"),
    Rule(f"{_L}.mlp.shared_experts.{{mlp}}.weight", f"{_L}.mlp.shared_experts.{{mlp}}.kernel", "transpose"),
) + MOE_RULES

# gpt-oss: experts stored [E, in, out] already (no transpose), gate and up interleaved column by column; a router
# with a bias (transformers' `mlp.router`, jaxgen's `mlp.gate`); attention sinks. MXFP4 checkpoints' `*_blocks` /
# `*_scales` pairs reach these rules as the dequantized tensor (checkpoints_convert.mxfp4).
GPT_OSS_RULES: tuple[Rule, ...] = (
    Rule(f"{_X}.gate_up_proj", (f"{_X}.gate_proj", f"{_X}.up_proj"), "identity", axis=2, interleave=True),
    Rule(f"{_X}.gate_up_proj_bias", (f"{_X}.gate_proj_bias", f"{_X}.up_proj_bias"), "identity", axis=1,
         interleave=True),
    Rule(f"{_X}.down_proj", f"{_X}.down_proj", "identity"),
    Rule(f"{_X}.down_proj_bias", f"{_X}.down_proj_bias", "identity"),
    Rule(f"{_L}.mlp.router.weight", f"{_L}.mlp.gate.kernel", "transpose"),
    Rule(f"{_L}.mlp.router.bias", f"{_L}.mlp.gate.bias", "identity"),
    Rule(f"{_L}.self_attn.sinks", f"{_L}.self_attn.sinks", "identity"),
) + LLAMA_RULES

TABLES: dict[str, tuple[Rule, ...]] = {
    "deepseek_v3": DEEPSEEK_RULES,
    "gpt_oss": GPT_OSS_RULES,
    "gemma4_text": GEMMA4_RULES,
    "qwen3_5_text": QWEN3_5_RULES,
    "qwen3_5_moe_text": QWEN3_5_MOE_RULES,
    "qwen3_next": QWEN3_NEXT_RULES,
    "llama": LLAMA_RULES,
    "mistral": LLAMA_RULES,
    "qwen2": LLAMA_RULES,
    "qwen3": LLAMA_RULES,
    "gpt2": GPT2_RULES,
    "gemma": LLAMA_RULES,
    "gemma2": LLAMA_RULES,
    "gemma3_text": LLAMA_RULES,
    "phi3": PHI3_RULES,
    "mixtral": MOE_RULES,
    "qwen2_moe": MOE_RULES,
    "qwen3_moe": MOE_RULES,
}

# Non-parameter buffers that older transformers versions saved; they are recomputed from the config (RoPE
# frequencies; GPT-2's causal-mask buffers `attn.bias` / `attn.masked_bias`).
IGNORED = re.compile(r"(?:model\.layers\.\d+\.self_attn\.)?(?:model\.)?rotary_emb\.inv_freq"
                     r"|(?:transformer\.)?h\.\d+\.attn\.(?:masked_)?bias")

def is_mtp_layer(config, key: str) -> bool:
    """Whether HF ``key`` belongs to a multi-token-prediction layer (DeepSeek-V3's ``model.layers.{L + j}``, past
    the ``L`` decoder layers): transformers ignores those on load, and conversion drops them."""
    m = re.match(r"model\.layers\.(\d+)\.", key)
    return bool(m) and 0 <= int(m.group(1)) - config.num_hidden_layers < config.mtp_layers


# With tied embeddings the LM head is the embedding; a checkpoint may still carry a copy under this key.
TIED_HEAD_KEY = "lm_head.weight"
EMBED_KEY = "model.embed_tokens.weight"
EMBED_NAME = "model.embed_tokens.embedding"


def _match(model_type: str, key: str) -> tuple[Rule, dict[str, str]] | None:
    for rule in TABLES[model_type]:
        m = rule.hf_pattern.fullmatch(key)
        if m:
            return rule, m.groupdict()
    return None


def targets(model_type: str, key: str) -> tuple[tuple[str, ...], str, int] | None:
    """``(jaxgen names, transform, split axis)`` that HF ``key`` feeds (one name unless it is fused), or None."""
    found = _match(model_type, key)
    if found is None:
        return None
    rule, slots = found
    return tuple(n.format(**slots) for n in rule.names), rule.transform, rule.axis


def map_key(model_type: str, key: str) -> tuple[str, str] | None:
    """``(jaxgen name, transform name)`` for an unfused HF ``key``, or None when no one-to-one rule matches."""
    found = targets(model_type, key)
    if found is None or len(found[0]) != 1:
        return None
    return found[0][0], found[1]


def plan_key(model_type: str, key: str, expected: Mapping[str, tuple[int, ...]],
             config=None) -> tuple[list[Piece], tuple[int, ...]] | None:
    """The :class:`Piece` s HF tensor ``key`` becomes and the HF shape the config implies for it, or None when no
    rule matches or a target is not a parameter of this config. A split's parts are sized by ``expected``; a
    regrouped split's indices come from ``config``."""
    found = targets(model_type, key)
    if found is None or any(n not in expected for n in found[0]):
        return None
    names, transform, axis = found
    back = SHAPE_OF[INVERSE[transform]]
    rule, slots = _match(model_type, key)
    if rule.stack:  # one expert's slice of a stacked parameter
        return [Piece(names[0], transform, index=int(slots["e"]))], back(expected[names[0]][1:])
    if len(names) == 1:
        return [Piece(names[0], transform)], back(expected[names[0]])
    shapes = [back(expected[n]) for n in names]
    assert all(len(s) == len(shapes[0]) and s[:axis] + s[axis + 1:] == shapes[0][:axis] + shapes[0][axis + 1:]
               for s in shapes), (key, shapes)  # the parts of a split differ only along its axis
    total = sum(shape[axis] for shape in shapes)
    if rule.regroup:  # part k is the rows REGROUPS names for it; together they cover the axis once
        indices = REGROUPS[rule.regroup](config)
        assert [len(i) for i in indices] == [shape[axis] for shape in shapes], (key, shapes)
        assert sorted(j for i in indices for j in i) == list(range(total)), key
        pieces = [Piece(name, transform, (axis, idx)) for name, idx in zip(names, indices)]
        return pieces, shapes[0][:axis] + (total,) + shapes[0][axis + 1:]
    if rule.interleave:  # part k is every len(names)-th slice from k; the parts must be equal
        assert len({shape[axis] for shape in shapes}) == 1, (key, shapes)
        pieces = [Piece(name, transform, (axis, k, None, len(names))) for k, name in enumerate(names)]
        return pieces, shapes[0][:axis] + (total,) + shapes[0][axis + 1:]
    pieces, start = [], 0
    for name, shape in zip(names, shapes):
        pieces.append(Piece(name, transform, (axis, start, start + shape[axis], 1)))
        start += shape[axis]
    return pieces, shapes[0][:axis] + (total,) + shapes[0][axis + 1:]


def cut(x: np.ndarray, piece: Piece) -> np.ndarray:
    """The jaxgen parameter ``piece`` describes, from its whole HF tensor ``x``."""
    if piece.part is not None and len(piece.part) == 2:  # regrouped: the listed indices along the axis
        axis, indices = piece.part
        x = np.take(x, np.asarray(indices), axis=axis)
    elif piece.part is not None:
        axis, start, stop, step = piece.part
        x = x[(slice(None),) * axis + (slice(start, stop, step),)]
    return TRANSFORMS[piece.transform](x)


def hf_key(model_type: str, name: str) -> tuple[str, str] | None:
    """``(HF key, transform name)`` that turns jaxgen parameter ``name`` back into its HF tensor (for a part of a
    fused tensor: the fused key; :func:`merge_order` says how the parts join), or None."""
    for rule in TABLES[model_type]:
        if rule.stack:  # export writes the fused form (a rule earlier in the table)
            continue
        for pattern in rule.patterns:
            m = pattern.fullmatch(name)
            if m:
                return rule.hf.format(**{**SLOT_DEFAULTS, **m.groupdict()}), INVERSE[rule.transform]
    return None


def merge_order(model_type: str, key: str, config=None) -> tuple[tuple[str, ...], int, bool | list]:
    """``(names, axis, placement)``: the jaxgen names whose HF-layout tensors make HF tensor ``key`` along
    ``axis``: concatenated (placement False), interleaved slice by slice (True), or, for a regrouped split, placed
    at each part's indices (a list of index tuples, from ``config``)."""
    names, _, axis = targets(model_type, key)
    rule = _match(model_type, key)[0]
    return names, axis, REGROUPS[rule.regroup](config) if rule.regroup else rule.interleave


def source_key(model_type: str, name: str) -> str:
    """The HF key jaxgen parameter ``name`` comes from (for error messages; ``name`` itself if no rule fits)."""
    found = hf_key(model_type, name)
    return found[0] if found else name


def embed_key(model_type: str, keys: Iterable[str]) -> str | None:
    """Which of a checkpoint's ``keys`` holds the token embedding (for the tied-head check)."""
    return next((k for k in keys if (m := map_key(model_type, k)) and m[0] == EMBED_NAME), None)
