#!/usr/bin/env python
"""Image + text generation on a MiniCPM-V-shaped model, jaxgen against transformers side by side: time to first
token (the image encoder, the prefill and one token) and decode tok/s.

    python benchmarks/bench_vision.py [--runs 5] [--new-tokens 64] [--out results/vision-cpu.json]

A random ``MiniCPMV4_6ForConditionalGeneration`` (a SigLIP-style tower with the window merger, a Qwen3.5 language
model; sizes below, small enough for a 2-core machine) with the tiny test tokenizer and MiniCPM-V's own image
processor at its real resolution (``scale_resolution`` 448, 14-pixel patches), saved with ``save_pretrained``; one
448x448 image and a short question through the processor's chat template, the same inputs on both sides. Greedy,
``min_new_tokens`` = ``max_new_tokens`` so both sides decode the same number of tokens. Each round runs, alternating
the sides: TTFT (``max_new_tokens=1``) and the full call; decode tok/s = ``(N - 1) / (full - TTFT)``. Medians over
``--runs`` rounds, after one warm-up call per side (jaxgen's compiles). Also jaxgen's image encoder alone, jitted:
it runs once per call, inside the prefill, so TTFT minus it is the text side's share. torch runs with 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]  # the test fixture's tokenizer and processor builders

VISION = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, num_channels=3,
              image_size=448, patch_size=14)
TEXT = dict(model_type="qwen3_5_text", hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
            layer_types=["linear_attention", "linear_attention", "full_attention"] * 2, num_attention_heads=8,
            num_key_value_heads=2, head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
            linear_key_head_dim=64, linear_value_head_dim=64, linear_conv_kernel_dim=4, max_position_embeddings=4096)


def build(folder: str):
    import torch
    import transformers

    import vlm_minicpmv as fx

    settings = dict(fx.IMAGE_PROCESSOR_SETTINGS, scale_resolution=448, max_slice_nums=9)
    tok = fx.build_tokenizer()
    image_processor = transformers.MiniCPMV4_6ImageProcessorPil(**settings)
    processor = fx._ProcessorWithoutTorchvision(image_processor=image_processor,
                                                video_processor=fx._stand_in_video_processor(), tokenizer=tok,
                                                chat_template=fx.CHAT_TEMPLATE)
    config = transformers.MiniCPMV4_6Config(
        text_config=dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id),
        vision_config=VISION, image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
        insert_layer_id=2, image_size=448, initializer_range=0.05, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.MiniCPMV4_6ForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    fx._standardise_saved_processor(folder)
    return model, processor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "vision-cpu.json"))
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import jax
    import numpy as np
    import torch

    import jaxgen
    from jaxgen.text.images import encode_with_images, load_processor
    from vlm_minicpmv import image

    torch.set_num_threads(2)
    folder = tempfile.mkdtemp(prefix="bench-vision-")
    ref, _ = build(folder)
    model = jaxgen.load_model(folder, dtype="float32")
    inputs = encode_with_images(load_processor(folder), ["What is in this picture? Describe it."],
                                [image(448, 448, 0)])
    n_image = int((inputs["input_ids"] == model.config.vision.image_token_id).sum())
    torch_inputs = {k: torch.tensor(v) for k, v in inputs.items()}

    def jax_call(n: int) -> float:
        t0 = time.perf_counter()
        out = jaxgen.generate(model, **inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        np.asarray(out.sequences)
        return time.perf_counter() - t0

    def hf_call(n: int) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            ref.generate(**torch_inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t0

    from flax import nnx

    encoder = nnx.merge(model.graphdef, model.params).vision
    sizes = tuple(map(tuple, inputs["target_sizes"].tolist()))
    encode = jax.jit(lambda pixels: encoder(pixels, sizes))
    pixels = jax.device_put(inputs["pixel_values"])

    def encoder_call() -> float:
        t0 = time.perf_counter()
        encode(pixels).block_until_ready()
        return time.perf_counter() - t0

    n = args.new_tokens
    for f in (jax_call, hf_call):  # warm-up (jaxgen compiles both lengths' buckets)
        f(1), f(n)
    encoder_call()
    rows = {k: [] for k in ("jax_ttft", "jax_full", "hf_ttft", "hf_full", "encoder")}
    for r in range(args.runs):
        rows["jax_ttft"].append(jax_call(1))
        rows["hf_ttft"].append(hf_call(1))
        rows["jax_full"].append(jax_call(n))
        rows["hf_full"].append(hf_call(n))
        rows["encoder"].append(encoder_call())
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items()), file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    res = dict(
        model=dict(vision=VISION, text={k: v for k, v in TEXT.items() if k != "layer_types"},
                   layer_types=TEXT["layer_types"], vision_params=sum(
                       int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(encoder))),
                   total_params=model.num_params()),
        image=dict(pixels="448x448", slices=len(sizes), target_sizes=sizes, image_tokens=n_image,
                   prompt_tokens=int(inputs["input_ids"].shape[1])),
        new_tokens=n, runs=args.runs, medians_s=med,
        jax=dict(ttft_ms=1e3 * med["jax_ttft"], decode_tok_s=(n - 1) / (med["jax_full"] - med["jax_ttft"]),
                 encoder_ms=1e3 * med["encoder"]),
        hf=dict(ttft_ms=1e3 * med["hf_ttft"], decode_tok_s=(n - 1) / (med["hf_full"] - med["hf_ttft"])),
        versions={m: __import__(m).__version__ for m in ("jax", "torch", "transformers")},
    )
    res["ratio"] = dict(ttft=res["hf"]["ttft_ms"] / res["jax"]["ttft_ms"],
                        decode=res["jax"]["decode_tok_s"] / res["hf"]["decode_tok_s"])
    print(json.dumps(res, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
