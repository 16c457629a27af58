"""Run by tests/test_family_matrix.py in a subprocess with 8 fake CPU devices; prints one JSON report on stdout.

argv[1]: JSON ``{family name: [checkpoint folder, [[data, model], ...]]}``. For each family: greedy with top-3
logprobs on a left-padded batch of 4, on one device and on each of its meshes.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import numpy as np  # noqa: E402

import jaxgen  # noqa: E402
from jaxgen.api.inputs import left_pad  # noqa: E402
from jaxgen.parallel.sharding import make_mesh  # noqa: E402

PROMPTS = [[5, 9, 17, 33, 4, 88], [7, 8, 9], [40, 41, 42, 43, 44, 45], [11, 100]]


def main() -> None:
    folders = json.loads(sys.argv[1])
    ids, mask = left_pad(PROMPTS, 3)
    kw = dict(max_new_tokens=6, top_logprobs=3, pad_token_id=3, eos_token_id=37, repetition_penalty=1.2)
    report = {}
    for name, (folder, meshes) in folders.items():
        want = jaxgen.generate(jaxgen.load_model(folder, dtype="float32"), ids, mask, **kw)
        for data, model in meshes:
            mesh = make_mesh(data, model)
            got = jaxgen.generate(jaxgen.load_model(folder, dtype="float32", mesh=mesh), ids, mask, **kw)
            report[f"{name}-{data}x{model}"] = dict(
                same_tokens=bool((np.asarray(got.sequences) == np.asarray(want.sequences)).all()),
                same_top_ids=bool((np.asarray(got.top_token_ids) == np.asarray(want.top_token_ids)).all()),
                logprob_diff=float(np.abs(np.asarray(got.token_logprobs) - np.asarray(want.token_logprobs)).max()))
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
