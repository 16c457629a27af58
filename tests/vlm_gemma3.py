"""Test fixture: a tiny random Gemma 3 vision-language checkpoint with a real, working processor.

``gemma3_checkpoint(folder)`` writes into ``folder`` a randomly initialised
``transformers.Gemma3ForConditionalGeneration`` (a few-layer Gemma 3 text model with mixed sliding/full attention,
a one-layer SigLIP vision tower and the multimodal projector) together with a ``Gemma3Processor`` that
``transformers.AutoProcessor.from_pretrained(folder)`` reloads offline: a Gemma 3 image processor sized for the
tiny vision tower, and a byte-level tokenizer built from scratch with the ``tokenizers`` library that carries the
Gemma 3 special tokens (``<start_of_image>``, ``<end_of_image>``, ``<image_soft_token>``, turn markers) as the
named attributes the processor reads, plus a small Gemma-3-style chat template that renders image items.

Everything is tiny (a checkpoint of a few hundred kB) and deterministic for a given ``seed``.
Run this file directly for a self-check (``python tests/vlm_gemma3.py``).
"""

from __future__ import annotations

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from hf_random import randomize_vectors

# ---- the tiny geometry ---------------------------------------------------------------------------------------
IMAGE_SIZE = 28  # the vision tower sees 28x28 images ...
PATCH_SIZE = 7  # ... cut into a 4x4 grid of 7x7 patches (16 patches) ...
MM_TOKENS_PER_IMAGE = 4  # ... pooled 2x2 into 4 soft tokens per image (a square that divides the 4x4 grid)

# ---- the tokenizer's special tokens, in id order (ids 0..8), then the 256 byte symbols -----------------------
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN, BOI, EOI, IMAGE_TOKEN]

# A small chat template in the shape of Gemma 3's: a leading BOS; a system message folded into the first user
# turn; "assistant" spoken as "model"; each turn "<start_of_turn>{role}\n{content}<end_of_turn>\n"; content
# either a string or a list of items, where an image item becomes "<start_of_image>" (the processor expands
# it into the full image sequence) and a text item its trimmed text.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set ns.prefix = messages[0]['content'] | trim -%}"
    "{%- else -%}{%- for item in messages[0]['content'] -%}"
    "{%- if item['type'] == 'text' -%}{%- set ns.prefix = ns.prefix + (item['text'] | trim) -%}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- set ns.prefix = ns.prefix + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/...') -}}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' -}}"
    "{%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<start_of_image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins a byte-level pre-tokenizer maps the bytes 0..255 to, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer (any text encodes; one token per byte) with the Gemma 3 special tokens.

    Ids: the special tokens 0..8 in ``SPECIAL_TOKENS`` order, then the 256 bytes (ids 9..264); BOS is prepended
    on encoding (as Gemma's tokenizer does), padding is on the left (as decoder-only generation wants)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in _byte_symbols():
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
    )


def build_processor() -> transformers.Gemma3Processor:
    """The Gemma 3 processor: image processor sized for the tiny vision tower, the tokenizer, the template."""
    try:  # the torchvision-backed image processor where torchvision is installed, else the PIL/NumPy one
        import torchvision  # noqa: F401

        image_processor_cls = transformers.Gemma3ImageProcessor
    except ImportError:
        image_processor_cls = transformers.Gemma3ImageProcessorPil
    image_processor = image_processor_cls(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return transformers.Gemma3Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        chat_template=CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )


def gemma3_config(tokenizer, **text_overrides) -> transformers.Gemma3Config:
    """The tiny Gemma 3 config whose special-token ids and vocabulary match ``tokenizer``."""
    vocab_size = len(tokenizer)
    text = dict(
        model_type="gemma3_text",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        query_pre_attn_scalar=16,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.25,
    )
    text.update(text_overrides)
    if "num_hidden_layers" in text_overrides and "layer_types" not in text_overrides:
        n = text["num_hidden_layers"]
        text["layer_types"] = ["full_attention" if i % 2 else "sliding_attention" for i in range(n)]
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_channels=3,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
    )
    return transformers.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        initializer_range=0.25,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def gemma3_checkpoint(folder: str, seed: int = 0, **text_overrides) -> transformers.Gemma3ForConditionalGeneration:
    """Build a tiny random Gemma 3 VLM, save it and its processor into ``folder``, and return the model (eval).

    ``text_overrides`` replace entries of the text config (e.g. ``num_hidden_layers=2``, ``sliding_window=8``)."""
    processor = build_processor()
    config = gemma3_config(processor.tokenizer, **text_overrides)
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(config)
    # the norms, biases and the projector's matrix and norm start at constants: shake them all
    randomize_vectors(model, seed + 1, also=("mm_input_projection_weight", "mm_soft_emb_norm"))
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


# ---- self-check --------------------------------------------------------------------------------------------------
def _image(seed: int, size: int = 40):
    """A random RGB image: a PIL image where Pillow is installed, else an HWC uint8 NumPy array."""
    import numpy as np

    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    try:
        from PIL import Image

        return Image.fromarray(arr)
    except ImportError:
        return arr


if __name__ == "__main__":
    import tempfile

    def show(tag, inputs):
        print(tag)
        for k, v in inputs.items():
            print(f"  {k}: {tuple(v.shape)} {v.dtype}")

    with tempfile.TemporaryDirectory() as folder:
        built = gemma3_checkpoint(folder)
        proc = transformers.AutoProcessor.from_pretrained(folder)
        tok = proc.tokenizer
        print("processor:", type(proc).__name__, type(proc.image_processor).__name__, type(tok).__name__)
        print("vocab size:", len(tok), "config vocab:", built.config.text_config.vocab_size)
        for name in ("pad", "eos", "bos", "boi", "eoi", "image"):
            print(f"  {name}_token = {getattr(tok, name + '_token')!r} id {getattr(tok, name + '_token_id')}")
        print("  turn tokens:", tok.convert_tokens_to_ids([START_OF_TURN, END_OF_TURN]))
        cfg = built.config
        print("config ids: image", cfg.image_token_id, "boi", cfg.boi_token_index, "eoi", cfg.eoi_token_index)
        assert (cfg.image_token_id, cfg.boi_token_index, cfg.eoi_token_index) == (
            tok.image_token_id, tok.boi_token_id, tok.eoi_token_id)
        assert tok.padding_side == "left"

        model = transformers.Gemma3ForConditionalGeneration.from_pretrained(folder).eval()

        one = proc(text=[f"Describe {BOI} please."], images=[[_image(1)]], return_tensors="pt", padding=True)
        show("one prompt, one image:", one)
        assert (one["input_ids"] == tok.image_token_id).sum() == MM_TOKENS_PER_IMAGE
        print("  text:", repr(tok.decode(one["input_ids"][0])))

        batch = proc(text=[f"A {BOI} b", f"Two: {BOI} and {BOI}?"], images=[[_image(2)], [_image(3), _image(4)]],
                     return_tensors="pt", padding=True)
        show("two prompts, 1 and 2 images:", batch)
        print("  image tokens per row:", (batch["input_ids"] == tok.image_token_id).sum(-1).tolist())
        print("  attention_mask:", batch["attention_mask"].tolist())
        assert (batch["input_ids"] == tok.image_token_id).sum(-1).tolist() == [4, 8]

        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "image", "image": _image(5)},
                                                 {"type": "text", "text": "What is this?"}]}]
        print("chat text:", repr(proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)))
        chat = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
        show("chat:", chat)
        assert (chat["input_ids"] == tok.image_token_id).sum() == MM_TOKENS_PER_IMAGE

        with torch.no_grad():
            for tag, inputs in (("one", one), ("batch", batch), ("chat", chat)):
                logits = model(**inputs).logits
                out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
                new = out[:, inputs["input_ids"].shape[1]:]
                print(f"{tag}: logits {tuple(logits.shape)} std {logits.std():.3f}; generate ->", new.tolist())
    print("self-check OK")
