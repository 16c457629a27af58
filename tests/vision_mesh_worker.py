"""Run in a subprocess with 8 fake CPU devices (tests/test_vision_mesh.py): the Gemma 3 and MiniCPM-V test
checkpoints at argv[1] and argv[2] on a (2, 4) mesh give one device's beam-search tokens and scores for a batch of
two image prompts. Prints ``REPORT {json}``."""

from __future__ import annotations

import json
import sys

import numpy as np

import jaxgen
from jaxgen.text.images import encode_with_images, load_processor
from vlm_minicpmv import image

report = {}
for name, folder in zip(("gemma3", "minicpmv4_6"), sys.argv[1:3]):
    inputs = encode_with_images(load_processor(folder), ["What is this?", "Another one"], [image(150, 330, 1)])
    kw = dict(max_new_tokens=6, num_beams=3, repetition_penalty=1.2, top_logprobs=2)
    one = jaxgen.generate(jaxgen.load_model(folder), **inputs, **kw)
    split = jaxgen.generate(jaxgen.load_model(folder, mesh=jaxgen.make_mesh(2, 4)), **inputs, **kw)
    report[name] = dict(
        same_tokens=bool(np.array_equal(np.asarray(one.sequences), np.asarray(split.sequences))),
        score_diff=float(np.abs(np.asarray(one.sequences_scores) - np.asarray(split.sequences_scores)).max()),
        logprob_diff=float(np.abs(np.asarray(one.token_logprobs) - np.asarray(split.token_logprobs)).max()))
print("REPORT " + json.dumps(report))
