"""One of two processes of a multi-host run on CPU (started by tests/test_multihost.py).

usage: multihost_worker.py PROCESS_ID PORT MODEL_DIR OUT_JSON. Each process has 4 fake CPU devices; the mesh
(data=2, model=4) spans both processes. Only process 0 writes OUT_JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxgen  # noqa: E402
from jaxgen.parallel import distributed  # noqa: E402
from jaxgen.parallel.sharding import make_mesh  # noqa: E402


def main(process_id: int, port: int, model_dir: str, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    model = jaxgen.load_model(model_dir, mesh=make_mesh(2, 4))
    ids = np.random.RandomState(0).randint(3, 128, (4, 6))
    results = {}
    for mode, kw in {"greedy": {}, "beam": dict(num_beams=2),
                     "sample": dict(do_sample=True, key=jax.random.key(5))}.items():
        o = jaxgen.generate(model, ids, max_new_tokens=6, top_logprobs=2, **kw)
        results[mode] = dict(sequences=np.asarray(o.sequences).tolist(),
                             token_logprobs=np.asarray(o.token_logprobs).tolist())
    if distributed.is_main_process():
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
