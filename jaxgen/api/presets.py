"""Named decoding presets: the settings other systems use, asked for by name.

``omnilmm``: OmniLMM / MiniCPM-V's deterministic mode (its ``chat(..., sampling=False)``): beam search with 3 beams
and repetition penalty 1.2, no sampling. ``omnilmm-sampling``: its ``sampling=True`` settings (top-p 0.8, top-k 100,
temperature 0.7, repetition penalty 1.05), reproducible in jaxgen with an explicit key.

Use them as overrides, ``jaxgen.generate(model, ids, **jaxgen.PRESETS["omnilmm"])``, or ``jaxgen generate
--preset omnilmm``; other options given beside a preset apply on top of it.
"""

from __future__ import annotations

from types import MappingProxyType

PRESETS = MappingProxyType({
    "omnilmm": MappingProxyType(dict(do_sample=False, num_beams=3, repetition_penalty=1.2)),
    "omnilmm-sampling": MappingProxyType(dict(do_sample=True, num_beams=1, top_p=0.8, top_k=100, temperature=0.7,
                                              repetition_penalty=1.05)),
})


def preset(name: str) -> dict:
    """The generation options of preset ``name`` (a copy); a clear error for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; jaxgen has {', '.join(PRESETS)}.")
    return dict(PRESETS[name])
