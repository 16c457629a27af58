"""Text + image prompts through the checkpoint's own processor (``AutoProcessor``): image files read with Pillow,
the chat template with image placeholders applied, pixels resized / sliced / normalised by transformers.
jaxgen reimplements none of it; this module only checks the inputs and says what is wrong."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from jaxgen.errors import JaxgenError


class ImageInputError(JaxgenError, ValueError):
    """An image file that cannot be read, or a checkpoint that has no processor for images."""


def load_images(paths: Sequence[str | os.PathLike]) -> list:
    """The images at ``paths`` as RGB ``PIL.Image`` s, fully decoded now (a truncated file fails here, not later)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ImageInputError(f"{path}: no such image file.")
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageInputError(f"{path}: not a readable image ({e}); pass a PNG, JPEG or another format "
                                  "Pillow reads.") from e
    return images


def load_processor(folder: str):
    """The checkpoint's ``AutoProcessor``; an error saying what is missing when it has none for images."""
    import transformers

    has_config = any(os.path.isfile(os.path.join(folder, f)) for f in
                     ("processor_config.json", "preprocessor_config.json"))
    if not has_config:
        raise ImageInputError(f"{folder}: no processor (processor_config.json / preprocessor_config.json) to prepare "
                              "images with; copy the processor files that came with the checkpoint into the folder "
                              "(a `jaxgen convert` output keeps them when the source had them).")
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder)
    except ImportError as e:
        processor = _without_video_processor(folder, e)
    except Exception as e:  # noqa: BLE001 (transformers raises many kinds here; say what failed and where)
        raise ImageInputError(f"{folder}: transformers could not load its processor: {e}") from e
    if not hasattr(processor, "image_processor"):
        raise ImageInputError(f"{folder}: its processor ({type(processor).__name__}) has no image processor; this "
                              "checkpoint does not read images.")
    return processor


def _without_video_processor(folder: str, error: ImportError):
    """MiniCPM-V's processor without its video processor, which transformers builds on torchvision (often absent
    beside a CPU torch). Images never reach the video processor; the constructor only reads two settings of it."""
    import json

    import transformers

    try:
        with open(os.path.join(folder, "processor_config.json")) as f:
            name = json.load(f).get("processor_class")
    except (OSError, ValueError):
        name = None
    if name != "MiniCPMV4_6Processor":
        raise ImageInputError(f"{folder}: transformers could not load its processor: {error}") from error
    from transformers.video_processing_utils import VideoProcessorMixin

    image_processor = transformers.AutoImageProcessor.from_pretrained(folder)

    class VideoSettings(VideoProcessorMixin):  # what MiniCPMV4_6Processor.__init__ reads
        slice_mode = getattr(image_processor, "slice_mode", True)
        downsample_mode = getattr(image_processor, "downsample_mode", "16x")

    class Processor(transformers.MiniCPMV4_6Processor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    template = os.path.join(folder, "chat_template.jinja")
    chat = open(template).read() if os.path.isfile(template) else getattr(tokenizer, "chat_template", None)
    return Processor(image_processor=image_processor, video_processor=VideoSettings(), tokenizer=tokenizer,
                     chat_template=chat)


def encode_with_images(processor: Any, prompts: Sequence[str], images: Sequence[Any]) -> dict[str, np.ndarray]:
    """Every prompt as one user turn holding ``images`` (the same images for each prompt) then its text, through
    the processor's chat template; left-padded. Returns the processor's outputs as numpy arrays (``input_ids``,
    ``attention_mask``, ``pixel_values``, and ``token_type_ids`` / ``target_sizes`` where it makes them)."""
    if not getattr(processor, "chat_template", None):
        raise ImageInputError("the processor has no chat template to place the image placeholders with; add the "
                              "checkpoint's chat_template.jinja, or build input_ids and pixel_values with the "
                              "processor yourself and call jaxgen.generate.")
    for p in prompts:
        if not isinstance(p, str):
            raise ImageInputError("prompts with images must be text (the chat template places the images).")
    conversations = [[{"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                                   {"type": "text", "text": p}]}] for p in prompts]
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    out = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        processor_kwargs=dict(return_tensors="np", padding=len(prompts) > 1))
    return {k: np.asarray(v) for k, v in out.items()}
