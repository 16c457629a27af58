"""Two processes x 4 CPU devices, one (2, 4) mesh across both: same tokens as one device; only process 0 writes."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxgen
from conftest import hf_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_mesh_matches_single_device(tmp_path):
    folder, _ = hf_checkpoint("llama_mha")  # 4 heads, 4 KV heads: split 4 ways on the model axis
    port, out = _free_port(), tmp_path / "out.json"
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, worker, str(i), str(port), folder, str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-host run did not finish")
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    got = json.loads(out.read_text())

    model = jaxgen.load_model(folder)
    ids = np.random.RandomState(0).randint(3, 128, (4, 6))
    for mode, kw in {"greedy": {}, "beam": dict(num_beams=2),
                     "sample": dict(do_sample=True, key=jax.random.key(5))}.items():
        want = jaxgen.generate(model, ids, max_new_tokens=6, top_logprobs=2, **kw)
        np.testing.assert_array_equal(np.asarray(got[mode]["sequences"]), np.asarray(want.sequences), err_msg=mode)
        np.testing.assert_allclose(np.asarray(got[mode]["token_logprobs"]), np.asarray(want.token_logprobs),
                                   atol=1e-5, err_msg=mode)
