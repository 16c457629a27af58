"""Run in a subprocess with 8 fake CPU devices by tests/test_sharding.py; prints one JSON report on stdout.

Compares generation on meshes (8,1), (1,8), (2,4), (4,2) with the single-device result (``PLAN``: which family
and mode on which mesh), and reads back the parameter shardings the compiled program actually uses.
"""

import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
from flax import nnx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import jaxgen  # noqa: E402
from checkpoints_convert import convert_checkpoint  # noqa: E402
from jaxgen.parallel.sharding import make_mesh  # noqa: E402

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
            vocab_size=128, initializer_range=0.3, eos_token_id=2, pad_token_id=0, max_position_embeddings=128)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, num_key_value_heads=1)),
}
MODES = {"greedy": {}, "beam": dict(num_beams=2, num_return_sequences=2),
         "sample": dict(do_sample=True, top_k=20, temperature=0.9)}
# Which modes run on which mesh, per family: every mesh shape and every mode is covered by llama and qwen3 (each
# (mesh, mode) pair at least once), the others on two meshes; a full cross product would double the suite's
# longest test for no new placement.
ALL, GREEDY = tuple(MODES), ("greedy",)
PLAN = {"llama": {(8, 1): GREEDY, (1, 8): GREEDY, (2, 4): ALL, (4, 2): GREEDY},
        "qwen3": {(2, 4): ALL, (4, 2): ("beam", "sample"), (1, 8): ("beam", "sample"), (8, 1): ("beam", "sample")},
        "mistral": {(2, 4): GREEDY, (1, 8): GREEDY}, "qwen2": {(2, 4): GREEDY, (1, 8): GREEDY}}


def main() -> None:
    root = tempfile.mkdtemp()
    ids = np.random.RandomState(0).randint(3, 128, (8, 6))
    mask = np.ones_like(ids)
    mask[1, :2] = mask[5, :4] = 0
    ids[mask == 0] = 0
    keys = jax.random.split(jax.random.key(7), 8)
    report = {"compare": [], "shardings": {}, "errors": {}}
    for family, (cfg_cls, model_cls, extra) in FAMILIES.items():
        torch.manual_seed(0)
        hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**BASE, **extra}))
        hf_dir, conv_dir = os.path.join(root, family), os.path.join(root, family + "-jaxgen")
        hf.save_pretrained(hf_dir)
        convert_checkpoint(hf_dir, conv_dir, progress=False)
        single = jaxgen.load_model(conv_dir)
        used = {m for modes in PLAN[family].values() for m in modes}
        want = {m: jaxgen.generate(single, ids, mask, key=keys, max_new_tokens=8, top_logprobs=3, **MODES[m])
                for m in used}
        for shape, modes in PLAN[family].items():
            model = jaxgen.load_model(conv_dir, mesh=make_mesh(*shape))
            for mode in modes:
                got = jaxgen.generate(model, ids, mask, key=keys, max_new_tokens=8, top_logprobs=3, **MODES[mode])
                report["compare"].append(dict(
                    family=family, mesh=shape, mode=mode,
                    same_tokens=bool((np.asarray(got.sequences) == np.asarray(want[mode].sequences)).all()),
                    same_top_ids=bool((np.asarray(got.top_token_ids) == np.asarray(want[mode].top_token_ids)).all()),
                    logprob_diff=float(np.abs(np.asarray(got.token_logprobs) - np.asarray(want[mode].token_logprobs)).max())))
            if family == "qwen3" and shape == (2, 4):
                report["shardings"] = compiled_param_specs(model, ids, mask)
    # Batches that do not divide the data axis run on filler rows, dropped from the results.
    model = jaxgen.load_model(os.path.join(root, "llama-jaxgen"), mesh=make_mesh(4, 2))
    single = jaxgen.load_model(os.path.join(root, "llama-jaxgen"))
    report["odd_batches"] = {}
    for n in (1, 3, 6):
        kw = dict(max_new_tokens=4, top_logprobs=2, do_sample=True, top_k=20)
        got = jaxgen.generate(model, ids[:n], mask[:n], key=keys[:n], **kw)
        want = jaxgen.generate(single, ids[:n], mask[:n], key=keys[:n], **kw)
        report["odd_batches"][n] = dict(
            shape=list(got.sequences.shape),
            same_tokens=bool((np.asarray(got.sequences) == np.asarray(want.sequences)).all()))
    for name, call in {
        "heads": lambda: jaxgen.load_model(os.path.join(root, "llama-jaxgen"), mesh=make_mesh(1, 3)),
    }.items():
        try:
            call()
            report["errors"][name] = None
        except ValueError as e:
            report["errors"][name] = str(e)
    print("REPORT " + json.dumps(report))


def compiled_param_specs(model, ids, mask) -> dict[str, list]:
    """Per parameter: [sharding the compiled generation program uses, sharding the table asks for]."""
    from jaxgen.parallel.sharding import param_shardings

    compiled = jaxgen.lower(model, ids, mask, max_new_tokens=2).compile()
    used = jax.tree_util.tree_leaves(compiled.input_shardings[0][0])
    flat = list(nnx.to_flat_state(model.params))
    assert len(used) == len(flat)
    names = {".".join(map(str, path)): var[...].shape for path, var in flat}
    table = param_shardings(model.config, model.mesh, names)
    return {name: [str(tuple(sh.spec)), str(tuple(table[name].spec))] for name, sh in zip(names, used)}


if __name__ == "__main__":
    sys.exit(main())
