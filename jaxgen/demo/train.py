"""Train the bundled demo model: a small Llama on the Python standard library's own source code.

    python -m jaxgen.demo.train --out jaxgen/demo/model [--seed 0] [--steps 400] [--batch-size 8]

Everything comes from this machine: the corpus is the ``.py`` files of the running Python's standard library
(tests, site-packages and data tables left out), split by file into training and held-out sets from the seed.
A byte-level BPE tokenizer is trained on the training files with ``tokenizers``; the model is jaxgen's own
:class:`~jaxgen.nn.transformer.CausalLM`, trained with optax (AdamW, linear warm-up + cosine decay, global-norm
clipping) through one ``jax.jit`` over split NNX state. The result is a Hugging Face folder (``config.json``,
``model.safetensors``, tokenizer, ``generation_config.json``) that both transformers and jaxgen load, plus
``training_metrics.json`` (held-out loss, a unigram baseline, the loss curve) and a loss-curve PNG.

Same seed, same Python, same machine type: same tokenizer, same batches, same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from checkpoints_convert.export import save_hf_safetensors
from jaxgen.config import ModelConfig
from jaxgen.nn.transformer import CausalLM

EOT = "<|endoftext|>"  # the only special token: document separator, BOS, EOS and padding

# Folders of the standard library that are not the library's code: tests, third-party packages, build data,
# and codec/doc tables (encodings/, pydoc_data/) whose string literals would drown the code.
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib-dynload",
             "encodings", "pydoc_data"}


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Model and optimisation settings (defaults: the committed model)."""

    seed: int = 0
    steps: int = 400
    batch_size: int = 8
    seq_len: int = 256
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    tie_embeddings: int = 1  # 1: the LM head is the embedding matrix; 0: a separate head
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    heldout_fraction: float = 0.05
    eval_every: int = 50
    eval_windows: int = 32  # held-out windows (evenly spread) for the periodic evaluation
    final_eval_windows: int = 256  # ... and for the final one (0 = all)
    log_every: int = 5
    test_slice_windows: int = 8  # held-out windows the bundled-model test recomputes


# --------------------------------------------------------------------------------------------------- corpus


def corpus_files(stdlib: str) -> list[str]:
    """Relative paths (``/``-separated, sorted) of the standard library's source files used as the corpus."""
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(("test", "config-"))]
        for name in names:
            # _sysconfigdata* describes the machine Python was built on, so it differs between machines.
            if name.endswith(".py") and not name.startswith(("test_", "_sysconfigdata")):
                files.append(os.path.relpath(os.path.join(root, name), stdlib).replace(os.sep, "/"))
    return sorted(files)


def split_files(files: list[str], seed: int, fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) file lists, each sorted; the held-out set is a seeded random ``fraction`` of files."""
    order = np.random.default_rng(seed).permutation(len(files))
    n_held = max(1, round(fraction * len(files)))
    held = sorted(files[i] for i in order[:n_held])
    held_set = set(held)
    return [f for f in files if f not in held_set], held


def read_text(stdlib: str, rel: str) -> str:
    with open(os.path.join(stdlib, rel), "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def sha256(stdlib: str, rel: str) -> str:
    with open(os.path.join(stdlib, rel), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ------------------------------------------------------------------------------------------------ tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style pre-tokenisation) wrapped as a transformers ``PreTrainedTokenizerFast``.

    Encoding prepends ``<|endoftext|>``: the model saw every file start after one, so a prompt looks like the
    start of a file.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    eot = tok.token_to_id(EOT)
    tok.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B",
                                                       special_tokens=[(EOT, eot)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=None, model_max_length=1 << 30, clean_up_tokenization_spaces=False)


def encode_documents(tokenizer, texts: list[str]) -> np.ndarray:
    """One int32 stream: each document as ``<|endoftext|> tokens...`` (the tokenizer adds the separator)."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return np.concatenate([np.asarray(x, np.int32) for x in ids])


def windows(stream: np.ndarray, length: int) -> np.ndarray:
    """Consecutive ``[N, length + 1]`` windows with stride ``length`` (each target predicted exactly once)."""
    n = (len(stream) - 1) // length
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    return stream[idx]


def spread(data: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of ``data`` evenly spaced from first to last (all rows when ``n`` is 0 or too large)."""
    if n <= 0 or n >= len(data):
        return data
    return data[np.linspace(0, len(data) - 1, n).round().astype(int)]


# ---------------------------------------------------------------------------------------------------- model


def hf_config(h: Hyper, tokenizer):
    import transformers

    eot = tokenizer.convert_tokens_to_ids(EOT)
    return transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=h.hidden_size, intermediate_size=h.intermediate_size,
        num_hidden_layers=h.num_layers, num_attention_heads=h.num_heads, num_key_value_heads=h.num_kv_heads,
        max_position_embeddings=h.seq_len, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=bool(h.tie_embeddings),
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, initializer_range=0.02, dtype="float32")


def forward(graphdef, params, tokens: jax.Array) -> jax.Array:
    """Causal-LM logits ``float32[B, T, V]`` for ``tokens int32[B, T]`` (no padding, positions 0..T-1)."""
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    logits, _ = nnx.merge(graphdef, params)(tokens, positions, None, jnp.ones((b, t), jnp.int32))
    return logits


def make_train_step(graphdef, optimizer: optax.GradientTransformation):
    """``train_step(params, opt_state, batch int32[B, T+1]) -> (params, opt_state, loss, grad_norm)``, jitted.

    A plain ``jax.jit`` over the split state: the NNX graph is merged inside the traced function only.
    """

    def loss_fn(params, batch):
        logits = forward(graphdef, params, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)

    return jax.jit(train_step, donate_argnums=(0, 1))


def make_eval(graphdef):
    @jax.jit
    def nll_sum(params, batch, weight):
        logits = forward(graphdef, params, batch[:, :-1])
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
        return jnp.sum(nll * weight[:, None])

    def mean_nll(params, data: np.ndarray, batch_size: int) -> float:
        """Mean next-token loss (nats) over every target of ``data [N, T+1]``, in fixed-size jitted batches."""
        total, n = 0.0, len(data)
        for start in range(0, n, batch_size):
            chunk = data[start:start + batch_size]
            weight = np.ones(batch_size, np.float32)
            if len(chunk) < batch_size:  # pad with zero-weight rows: one compiled shape for every batch
                weight[len(chunk):] = 0
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), axis=0)])
            total += float(nll_sum(params, jnp.asarray(chunk), jnp.asarray(weight)))
        return total / (n * (data.shape[1] - 1))

    return mean_nll


def unigram_nll(train_stream: np.ndarray, targets: np.ndarray, vocab: int) -> float:
    """Mean loss (nats) on ``targets`` of a unigram model fitted on the training tokens, add-one smoothed."""
    counts = np.bincount(train_stream, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[targets.reshape(-1)].mean())


# ----------------------------------------------------------------------------------------------- saving


def save_model(out: str, hf_cfg, config: ModelConfig, tokenizer, params, save_dtype: str) -> None:
    import transformers

    os.makedirs(out, exist_ok=True)
    hf_cfg.dtype = save_dtype
    hf_cfg.save_pretrained(out)
    # The converter's own table, read backwards, names and lays out the tensors as transformers expects.
    by_name = {".".join(map(str, path)): np.asarray(leaf[...]) for path, leaf in nnx.to_flat_state(params)}
    save_hf_safetensors(os.path.join(out, "model.safetensors"), config, by_name, save_dtype)
    tokenizer.save_pretrained(out)
    # transformers 5 writes its own class name, which 4.x cannot resolve; the 4.x name loads in both.
    tok_cfg = os.path.join(out, "tokenizer_config.json")
    with open(tok_cfg) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(tok_cfg, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    eot = tokenizer.convert_tokens_to_ids(EOT)
    transformers.GenerationConfig(
        do_sample=True, temperature=0.8, top_p=0.95, top_k=50, max_new_tokens=64,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot).save_pretrained(out)


def reload_model(out: str):
    """The saved weights as jaxgen loads them (so every reported number is the shipped model's)."""
    import jaxgen

    return jaxgen.load_model(out)


def check_transformers_parity(out: str, tokens: np.ndarray) -> float | None:
    """Max |logit difference| between transformers and jaxgen on ``tokens int32[1, T]``; None without torch."""
    try:
        import torch
    except ImportError:
        print("torch is not installed: skipping the transformers cross-check (pip install 'jaxgen[crosscheck]').")
        return None
    import transformers

    import jaxgen

    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    transformers.AutoTokenizer.from_pretrained(out)  # must load too
    with torch.no_grad():
        ref = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    model = jaxgen.load_model(out)
    t = tokens.shape[1]
    ours, _ = jax.jit(model.step)(model.params, jnp.asarray(tokens), jnp.arange(t, dtype=jnp.int32)[None], None,
                                  jnp.ones(tokens.shape, jnp.int32))
    return float(np.max(np.abs(np.asarray(ours) - ref)))


def sample_text(out: str, prompt: str, seed: int) -> str:
    """Sample from the saved model with its generation config (what ``jaxgen generate PROMPT`` would do)."""
    import transformers

    import jaxgen

    model = jaxgen.load_model(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = np.asarray([tokenizer(prompt)["input_ids"]], np.int32)
    res = jaxgen.generate(model, ids, key=jax.random.key(seed))
    new = np.asarray(res.sequences[0, ids.shape[1]:ids.shape[1] + int(res.num_generated[0])])
    return prompt + tokenizer.decode(new, skip_special_tokens=True)


def plot_curve(path: str, metrics: dict) -> bool:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no loss-curve plot written to {path} "
              "(pip install matplotlib, then retrain; the curve values are in training_metrics.json).")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps, loss = zip(*metrics["train_loss_curve"])
    ax.plot(steps, loss, lw=1.2, label="training loss")
    steps, loss = zip(*metrics["heldout_loss_curve"])
    ax.plot(steps, loss, "o-", ms=3.5, lw=1.2, label="held-out loss")
    ax.axhline(metrics["unigram_heldout_loss"], color="gray", ls="--", lw=1,
               label=f"unigram baseline (ppl {metrics['unigram_heldout_perplexity']:.0f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(f"jaxgen demo model ({metrics['num_params'] / 1e6:.1f}M params) on the Python stdlib: "
                 f"held-out ppl {metrics['heldout_perplexity']:.1f}", fontsize=9)
    ax.set_ylim(0, min(9.0, max(loss) + 1.0) if loss else 9.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------- main


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def train(out: str, h: Hyper, stdlib: str, plot_path: str | None, save_dtype: str = "float32") -> dict:
    t_start = time.time()
    files = corpus_files(stdlib)
    train_files, held_files = split_files(files, h.seed, h.heldout_fraction)
    print(f"corpus: {len(files)} files from {stdlib} ({len(train_files)} training, {len(held_files)} held out)",
          flush=True)
    train_texts = [read_text(stdlib, f) for f in train_files]
    held_texts = [read_text(stdlib, f) for f in held_files]

    tokenizer = train_tokenizer(train_texts, h.vocab_size)
    train_stream = encode_documents(tokenizer, train_texts)
    held_stream = encode_documents(tokenizer, held_texts)
    chars = sum(map(len, train_texts))
    print(f"tokenizer: {len(tokenizer)} tokens, {chars / len(train_stream):.2f} characters/token; "
          f"{len(train_stream):,} training tokens, {len(held_stream):,} held-out tokens "
          f"({time.time() - t_start:.0f} s)", flush=True)

    hf_cfg = hf_config(h, tokenizer)
    config = ModelConfig.from_hf_dict(hf_cfg.to_dict())
    model = CausalLM(config, rngs=nnx.Rngs(h.seed))
    graphdef, params = nnx.split(model)
    num_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    assert num_params == config.num_params(), (num_params, config.num_params())
    print(f"model: {num_params:,} parameters ({h.num_layers} layers, hidden {h.hidden_size}, {h.num_heads} heads / "
          f"{h.num_kv_heads} KV heads, MLP {h.intermediate_size}, vocab {config.vocab_size}, tied embeddings)",
          flush=True)

    schedule = optax.warmup_cosine_decay_schedule(0.0, h.learning_rate, h.warmup_steps, h.steps,
                                                  end_value=h.learning_rate * h.min_lr_ratio)
    # Decay matrices only (not norm scales), as is usual for transformers.
    decay_mask = jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    optimizer = optax.chain(optax.clip_by_global_norm(h.clip_norm),
                            optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=h.weight_decay, mask=decay_mask))
    opt_state = optimizer.init(params)
    train_step = make_train_step(graphdef, optimizer)
    mean_nll = make_eval(graphdef)

    all_windows = windows(held_stream, h.seq_len)
    held_windows = spread(all_windows, h.final_eval_windows)
    eval_windows = spread(all_windows, h.eval_windows)
    rng = np.random.default_rng(h.seed)
    max_start = len(train_stream) - h.seq_len - 1
    tokens_per_step = h.batch_size * h.seq_len
    train_curve, held_curve, window_losses = [], [], []
    t_train = time.time()
    print(f"training: {h.steps} steps x {h.batch_size} x {h.seq_len} tokens "
          f"({h.steps * tokens_per_step / len(train_stream):.2f} epochs), peak lr {h.learning_rate}", flush=True)
    # tqdm shows the rate and time left; the loss goes into its postfix and, every log_every steps, a line of its own.
    t_timed = t_train
    bar = tqdm(range(1, h.steps + 1), desc="training", unit="step", dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        starts = rng.integers(0, max_start + 1, size=h.batch_size)
        batch = train_stream[starts[:, None] + np.arange(h.seq_len + 1)[None, :]]
        params, opt_state, loss, gnorm = train_step(params, opt_state, jnp.asarray(batch))
        window_losses.append(loss)
        if step == 1:
            loss.block_until_ready()
            t_timed = time.time()  # tokens/s leaves out the first step's compilation
            bar.write(f"step 1 compiled and ran in {t_timed - t_train:.1f} s")
        if step % h.log_every == 0 or step == h.steps:
            mean = float(np.mean([float(x) for x in window_losses]))
            window_losses = []
            train_curve.append([step, round(mean, 4)])
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{schedule(step):.2e}")
            bar.write(f"step {step:5d}/{h.steps}  loss {mean:.4f}  grad-norm {float(gnorm):.2f}  "
                      f"lr {schedule(step):.2e}  elapsed {_fmt_time(time.time() - t_train)}")
        if step % h.eval_every == 0 or step == h.steps:
            held = mean_nll(params, eval_windows, h.batch_size)
            held_curve.append([step, round(held, 4)])
            bar.write(f"step {step:5d}  held-out loss {held:.4f} (ppl {math.exp(held):.1f}, "
                      f"{len(eval_windows)} windows)")
    bar.close()
    train_time = time.time() - t_train

    save_model(out, hf_cfg, config, tokenizer, params, save_dtype)
    # Report on the weights as saved and reloaded (matters when they are stored in bfloat16).
    shipped = reload_model(out)
    held_loss = mean_nll(shipped.params, held_windows, h.batch_size)
    uni_loss = unigram_nll(train_stream, held_windows[:, 1:], config.vocab_size)

    # The slice the bundled-model test recomputes: the first windows of the held-out stream, i.e. of the first
    # held-out files in sorted order. Its tokens are saved too, for machines whose stdlib differs.
    slice_tokens = held_stream[: h.test_slice_windows * h.seq_len + 1]
    slice_windows = windows(slice_tokens, h.seq_len)
    slice_loss = mean_nll(shipped.params, slice_windows, h.batch_size)
    per_file = [len(x) for x in tokenizer(held_texts[:50])["input_ids"]]
    n_files = int(np.searchsorted(np.cumsum(per_file), len(slice_tokens))) + 1
    np.save(os.path.join(out, "heldout_sample.npy"), slice_tokens.astype(np.int16))

    parity = check_transformers_parity(out, held_windows[:1, :64].astype(np.int32))
    if parity is not None:
        print(f"transformers vs jaxgen logits on the saved model: max |diff| = {parity:.2e}", flush=True)
        assert parity <= 1e-4, f"logit mismatch {parity} between transformers and jaxgen"
    prompt = "def fibonacci(n):"
    sample = sample_text(out, prompt, h.seed)

    metrics = dict(
        seed=h.seed, steps=h.steps, hyperparameters=dataclasses.asdict(h), num_params=num_params,
        save_dtype=save_dtype, python=sys.version.split()[0], jax=jax.__version__,
        corpus=dict(stdlib=stdlib, num_files=len(files), train_files=len(train_files), heldout_files=held_files,
                    train_tokens=int(len(train_stream)), heldout_tokens=int(len(held_stream)),
                    heldout_eval_tokens=int(held_windows[:, 1:].size),
                    skipped_dirs=sorted(SKIP_DIRS)),
        train_time_s=round(train_time, 1), total_time_s=None, tokens_per_s=round(
            (h.steps - 1) * tokens_per_step / max(train_time - (t_timed - t_train), 1e-9), 1),
        heldout_loss=round(held_loss, 5), heldout_perplexity=round(math.exp(held_loss), 3),
        unigram_heldout_loss=round(uni_loss, 5), unigram_heldout_perplexity=round(math.exp(uni_loss), 3),
        test_slice=dict(windows=h.test_slice_windows, seq_len=h.seq_len, loss=round(slice_loss, 5),
                        files=[dict(path=f, sha256=sha256(stdlib, f)) for f in held_files[:n_files]],
                        tokens_file="heldout_sample.npy"),
        # The test passes when the recomputed slice loss is below this: the slice loss at training time plus a
        # margin far larger than float differences between machines, far below the unigram baseline.
        threshold=round(slice_loss + 0.05, 5),
        transformers_max_abs_logit_diff=parity,
        train_loss_curve=train_curve, heldout_loss_curve=held_curve,
        sample=dict(prompt=prompt, seed=h.seed, text=sample),
    )
    metrics["total_time_s"] = round(time.time() - t_start, 1)
    with open(os.path.join(out, "training_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    if plot_path and plot_curve(plot_path, metrics):
        print(f"loss curve: {plot_path}")
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"held-out loss {held_loss:.4f} (perplexity {math.exp(held_loss):.2f}) vs unigram baseline "
          f"{uni_loss:.4f} (perplexity {math.exp(uni_loss):.1f}); test slice loss {slice_loss:.4f}")
    print(f"saved {out} ({size / 1e6:.1f} MB) in {_fmt_time(metrics['total_time_s'])} "
          f"(training {_fmt_time(train_time)})")
    print(f"sample:\n{sample}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    d = Hyper()
    p = argparse.ArgumentParser(prog="python -m jaxgen.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "model"),
                   help="output folder (default: the bundled model folder jaxgen/demo/model)")
    p.add_argument("--plot", default=None, help="loss-curve PNG (default: loss_curve.png beside --out)")
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"], help="standard-library folder (corpus)")
    p.add_argument("--save-dtype", choices=("float32", "bfloat16"), default="float32")
    for f in dataclasses.fields(Hyper):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name))
    args = p.parse_args(argv)
    h = Hyper(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Hyper)})
    if not 0 <= h.warmup_steps < h.steps:
        p.error(f"--warmup-steps ({h.warmup_steps}) must be smaller than --steps ({h.steps}).")
    plot = args.plot or os.path.join(os.path.dirname(os.path.abspath(args.out)), "loss_curve.png")
    train(args.out, h, args.stdlib, plot, args.save_dtype)


if __name__ == "__main__":
    main()
