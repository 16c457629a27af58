"""Test fixture: a tiny random MiniCPM-V 4.6 checkpoint with a real, working processor.

``minicpmv_checkpoint(folder)`` writes into ``folder`` a randomly initialised
``transformers.MiniCPMV4_6ForConditionalGeneration`` (a 4-layer Qwen3.5 hybrid text model: three Gated DeltaNet
layers and one gated full-attention layer; a 3-layer NaViT-packed vision tower with the 2x2 window-attention merger
after layer 1; one downsampling MLP merger) and a ``MiniCPMV4_6Processor``: its image processor with small slicing
settings (``scale_resolution`` 112, at most 4 slices, 14-pixel patches) and a byte-level tokenizer built from
scratch with the ``tokenizers`` library that carries MiniCPM-V's markup tokens (``<image>``, ``</image>``,
``<slice>``, ``</slice>``, ``<image_id>``, ``</image_id>``), the image/video placeholders and ChatML turn markers,
plus a small ChatML chat template that renders image items as the placeholder.

The processor's constructor needs a video processor, and transformers' only one for MiniCPM-V needs torchvision.
Where torchvision imports, ``load_processor(folder)`` is ``transformers.AutoProcessor.from_pretrained(folder)``;
where it does not (torch 2.13's CPU build has no working torchvision on PyPI), it assembles the same processor
from ``AutoImageProcessor`` and ``AutoTokenizer`` with a stand-in video processor that only carries the settings
the processor's constructor reads (images never touch it). The folder itself is the standard layout either way.

Everything is tiny and deterministic for a given ``seed``. Run this file for a self-check
(``python tests/vlm_minicpmv.py``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from hf_random import randomize_vectors

# ---- the tiny geometry ---------------------------------------------------------------------------------------
PATCH_SIZE = 14  # the image processor's patches and the tower's patch convolution
SCALE_RESOLUTION = 112  # a source image / slice is resized to about 112x112 px: an 8x8 patch grid, 4 tokens ("16x")
MAX_SLICE_NUMS = 4
VISION_IMAGE_SIZE = 98  # the learned position table is 7x7: grids of 8 patches per side map to it by nearest bucket
INSERT_LAYER_ID = 1  # the window merger runs after vision layer 1 of 3 (layer 2 sees the merged tokens)
INIT_RANGE = 0.25  # std of the random weights
# The language model's: the chunked delta rule of its Gated DeltaNet layers amplifies float32 rounding at 0.25
# (transformers itself then differs from its float64 result by ~1e-3 on 100-token prompts); at 0.1 both sides stay
# within ~5e-5 of float64, so a comparison is decided by the model.
TEXT_INIT_RANGE = 0.1
# A trained projector maps image features to about the scale of the token embeddings; a random one overshoots it
# by an order of magnitude (std INIT_RANGE over 4 * 32 inputs, twice): its last projection is scaled by this.
FEATURE_SCALE = 0.125

# ---- the tokenizer's special tokens, in id order (ids 0..11), then the 256 byte symbols ----------------------
PAD, EOS, IM_START, UNK = "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<unk>"
IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"
MARKUP = {
    "image_start_token": "<image>", "image_end_token": "</image>",
    "slice_start_token": "<slice>", "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>",
}
SPECIAL_TOKENS = [PAD, EOS, IM_START, UNK, IMAGE_TOKEN, VIDEO_TOKEN, *MARKUP.values()]

# ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message; content is a string or a list of items, an image
# item becoming the image placeholder (the processor expands it into the image's markup and feature tokens).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|image_pad|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<|video_pad|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

IMAGE_PROCESSOR_SETTINGS = dict(scale_resolution=SCALE_RESOLUTION, max_slice_nums=MAX_SLICE_NUMS,
                                patch_size=PATCH_SIZE, slice_mode=True, downsample_mode="16x", use_image_id=True)


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer (any text encodes, one token per byte) with MiniCPM-V's special tokens.

    Ids: ``SPECIAL_TOKENS`` 0..11, then the 256 byte symbols; no BOS (as Qwen); padding on the left. The markup
    tokens and placeholders are named attributes (``tokenizer.image_token``, ``tokenizer.image_token_id``,
    ``tokenizer.slice_start_token``, ...) because the processor reads them by those names."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_of):
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN, **MARKUP},
        chat_template=CHAT_TEMPLATE,
    )


def _byte_of(symbol: str) -> int:
    """The byte a byte-level symbol stands for (GPT-2's table: printable bytes are themselves, the rest 256+)."""
    code = ord(symbol)
    if code < 256:
        return code
    unprintable = [b for b in range(256) if not (33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255)]
    return unprintable[code - 256]


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or the RuntimeError of a torchvision built for another torch
        return False
    return True


def _stand_in_video_processor():
    """What ``MiniCPMV4_6Processor.__init__`` reads off its video processor, for where torchvision is missing."""
    from transformers.video_processing_utils import VideoProcessorMixin

    class MiniCPMV4_6VideoSettings(VideoProcessorMixin):
        slice_mode = True
        downsample_mode = "16x"

    return MiniCPMV4_6VideoSettings()


class _ProcessorWithoutTorchvision(transformers.MiniCPMV4_6Processor):
    """``MiniCPMV4_6Processor`` itself, except that its constructor accepts the stand-in video processor: without
    torchvision transformers cannot even resolve the video processor base class it checks against."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)


def build_processor() -> transformers.MiniCPMV4_6Processor:
    """The processor: image processor with the small slicing settings, the tokenizer, the chat template."""
    if _torchvision_works():
        return transformers.MiniCPMV4_6Processor(
            image_processor=transformers.MiniCPMV4_6ImageProcessor(**IMAGE_PROCESSOR_SETTINGS),
            video_processor=transformers.MiniCPMV4_6VideoProcessor(**IMAGE_PROCESSOR_SETTINGS),
            tokenizer=build_tokenizer(), chat_template=CHAT_TEMPLATE)
    return _ProcessorWithoutTorchvision(
        image_processor=transformers.MiniCPMV4_6ImageProcessorPil(**IMAGE_PROCESSOR_SETTINGS),
        video_processor=_stand_in_video_processor(), tokenizer=build_tokenizer(), chat_template=CHAT_TEMPLATE)


def load_processor(folder: str) -> transformers.MiniCPMV4_6Processor:
    """``AutoProcessor.from_pretrained(folder)``; without torchvision, the same processor assembled from the
    folder's image processor and tokenizer with the stand-in video processor (see the module docstring)."""
    if _torchvision_works():
        return transformers.AutoProcessor.from_pretrained(folder)
    return _ProcessorWithoutTorchvision(
        image_processor=transformers.AutoImageProcessor.from_pretrained(folder),
        video_processor=_stand_in_video_processor(),
        tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
        chat_template=CHAT_TEMPLATE,
    )


def _standardise_saved_processor(folder: str) -> None:
    """Make a folder saved through ``_ProcessorWithoutTorchvision`` read as transformers' own would: the processor
    class named ``MiniCPMV4_6Processor`` and the real video processor's settings instead of the stand-in's."""
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = os.path.join(folder, name)
        with open(path) as f:
            saved = json.load(f)
        saved["processor_class"] = "MiniCPMV4_6Processor"
        if "video_processor" in saved:
            saved["video_processor"] = dict(IMAGE_PROCESSOR_SETTINGS, video_processor_type="MiniCPMV4_6VideoProcessor")
        with open(path, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)


def minicpmv_config(tokenizer, **overrides) -> transformers.MiniCPMV4_6Config:
    """The tiny config whose vocabulary and placeholder ids match ``tokenizer``; ``overrides`` replace top-level
    fields (``downsample_mode``, ``merger_times``, ``insert_layer_id``, ...)."""
    text = dict(
        model_type="qwen3_5_text", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, layer_types=["linear_attention", "linear_attention", "full_attention",
                                          "linear_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, max_position_embeddings=1024, initializer_range=TEXT_INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_channels=3,
        image_size=VISION_IMAGE_SIZE, patch_size=PATCH_SIZE, initializer_range=INIT_RANGE,
    )
    fields = dict(insert_layer_id=INSERT_LAYER_ID, image_size=SCALE_RESOLUTION, downsample_mode="16x",
                  merger_times=1)
    fields.update(overrides)
    return transformers.MiniCPMV4_6Config(
        text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id, initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **fields,
    )


def minicpmv_checkpoint(folder: str, seed: int = 0, **overrides) -> transformers.MiniCPMV4_6ForConditionalGeneration:
    """Build a tiny random MiniCPM-V 4.6, save it and its processor into ``folder``, return the model (eval, float32).

    Every 1-D parameter (norm weights, biases) gets ``0.3 * randn`` added, so a dropped or swapped one shows; the
    merger's last projection is scaled by ``FEATURE_SCALE`` (image features at the token embeddings' scale).
    ``overrides`` go to :func:`minicpmv_config` (the processor keeps "16x" token counts; pass
    ``downsample_mode="4x"`` to the processor call as well when the model uses it)."""
    processor = build_processor()
    config = minicpmv_config(processor.tokenizer, **overrides)
    torch.manual_seed(seed)
    model = transformers.MiniCPMV4_6ForConditionalGeneration(config)
    randomize_vectors(model, seed + 1)
    with torch.no_grad():
        last = model.model.merger.mlp[-1].linear_2
        last.weight.mul_(FEATURE_SCALE)
        last.bias.mul_(FEATURE_SCALE)
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if not _torchvision_works():
        _standardise_saved_processor(folder)
    return model


def image(height: int, width: int, seed: int = 0):
    """A random RGB PIL image of ``height x width`` pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


# ---- self-check --------------------------------------------------------------------------------------------------
if __name__ == "__main__":
    import tempfile

    def show(tag, inputs):
        print(tag)
        for k, v in inputs.items():
            print(f"  {k}: {tuple(v.shape)} {v.dtype}" if hasattr(v, "shape") else f"  {k}: {v!r}")

    with tempfile.TemporaryDirectory() as folder:
        built = minicpmv_checkpoint(folder)
        print("files:", sorted(os.listdir(folder)))
        proc = load_processor(folder)
        tok = proc.tokenizer
        print("processor:", type(proc).__name__, type(proc.image_processor).__name__, type(tok).__name__)
        print("vocab size:", len(tok), "config vocab:", built.config.text_config.vocab_size)
        for name in ("image", "video", *(k[:-len("_token")] for k in MARKUP)):
            print(f"  {name}_token = {getattr(tok, name + '_token')!r} id {getattr(tok, name + '_token_id')}")
        model = transformers.MiniCPMV4_6ForConditionalGeneration.from_pretrained(folder).eval()

        one = proc(text=f"Describe {IMAGE_TOKEN} please.", images=[image(84, 84, 1)], return_tensors="pt")
        show("one prompt, one image:", one)
        print("  text:", repr(tok.decode(one["input_ids"][0])))
        big = proc(text=f"Big {IMAGE_TOKEN}.", images=[image(112, 224, 2)], return_tensors="pt")
        show("one prompt, one sliced image:", big)
        print("  text:", repr(tok.decode(big["input_ids"][0])))
        batch = proc(text=[f"A {IMAGE_TOKEN} b", f"Two: {IMAGE_TOKEN} and {IMAGE_TOKEN}?"],
                     images=[[image(84, 84, 3)], [image(112, 224, 4), image(60, 120, 5)]], return_tensors="pt")
        show("two prompts, 1 and 2 images:", batch)
        print("  image tokens per row:", (batch["input_ids"] == tok.image_token_id).sum(-1).tolist())
        messages = [{"role": "user", "content": [{"type": "image", "image": image(84, 84, 6)},
                                                 {"type": "text", "text": "What is this?"}]}]
        print("chat text:", repr(proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)))
        chat = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
        show("chat:", chat)
        with torch.no_grad():
            for tag, inputs in (("one", one), ("big", big), ("batch", batch), ("chat", chat)):
                logits = model(**inputs).logits
                out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
                print(f"{tag}: logits {tuple(logits.shape)} std {logits.std():.3f}; generate ->",
                      out[:, inputs["input_ids"].shape[1]:].tolist())
    print("self-check OK")
