"""transformers' ``generate(do_sample=True)`` draws jaxgen's tokens when it consumes jaxgen's uniforms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxgen
from conftest import hf_checkpoint
from jaxgen.decode.sampling import sample_from_uniform
from jaxgen.crosscheck.hf_uniform_sampler import JaxgenUniformSampler, inverse_cdf, sampling_kwargs, uniforms_for

N = 12


@functools.lru_cache(maxsize=None)
def _model(variant: str):
    return jaxgen.load_model(hf_checkpoint(variant)[0])


def test_inverse_cdf_matches_jaxgen_sampler_on_hand_made_logits():
    rng = np.random.RandomState(0)
    scores = rng.normal(size=(64, 50)).astype(np.float32) * 3
    scores[:, 10:20] = -np.inf  # filtered tokens can never be drawn
    scores[5] = -np.inf
    scores[5, 7] = 1.0  # a single survivor
    u = rng.uniform(size=64).astype(np.float32)
    u[0], u[1] = 0.0, np.nextafter(np.float32(1), np.float32(0))
    jax_tokens = np.asarray(sample_from_uniform(jnp.asarray(scores), jnp.asarray(u)))
    tokens, distance = inverse_cdf(torch.from_numpy(scores), torch.from_numpy(u))
    np.testing.assert_array_equal(tokens.numpy(), jax_tokens)
    assert not np.isin(jax_tokens, np.arange(10, 20)).any()
    assert tokens[5] == 7 and distance[5] == np.inf
    assert (distance.numpy() >= 0).all()


def test_boundary_distance_is_measured():
    scores = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    token, distance = inverse_cdf(scores, torch.tensor([0.5 + 1e-7], dtype=torch.float64))
    assert token.item() == 2 and distance.item() == pytest.approx(1e-7, abs=1e-9)
    token, distance = inverse_cdf(scores, torch.tensor([0.1]))
    assert token.item() == 0 and distance.item() == pytest.approx(0.15)


def test_processor_returns_one_hot_and_checks_its_table():
    sampler = JaxgenUniformSampler(np.asarray([[0.3, 0.9]]), prompt_length=3)
    scores = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    out = sampler(torch.zeros((1, 3), dtype=torch.long), scores)
    assert torch.isinf(out).sum() == 2 and out[0, 1] == 0  # 0.3 falls in token 1's interval [0.2, 0.5)
    out = sampler(torch.zeros((1, 4), dtype=torch.long), scores)
    assert out[0, 2] == 0
    np.testing.assert_array_equal(sampler.chosen, [[1, 2]])
    with pytest.raises(ValueError, match="outside its table"):
        sampler(torch.zeros((1, 5), dtype=torch.long), scores)
    with pytest.raises(ValueError, match="rows"):
        sampler(torch.zeros((2, 3), dtype=torch.long), torch.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        JaxgenUniformSampler(np.asarray([[1.5]]), 1)


# Two processor plans (one compiled program each); the values inside a plan are traced, so they vary freely.
CONFIGS = [
    dict(temperature=0.7, top_k=10),
    dict(temperature=1.6, top_k=50),
    dict(temperature=0.9, top_k=40, top_p=0.8, min_p=0.05),
    dict(temperature=1.3, top_k=128, top_p=0.95, min_p=0.2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_transformers_draws_jaxgen_tokens(config):
    """Left-padded batch of two prompts, three seeds: token-for-token identical sequences."""
    _, hf = hf_checkpoint("llama_gqa")
    model = _model("llama_gqa")
    ids = np.asarray([[0, 0, 0, 1, 5, 6, 7], [1, 9, 10, 11, 12, 13, 14]], np.int32)
    mask = (np.arange(7)[None] >= np.asarray([[3], [0]])).astype(np.int32)
    for seed in range(3):
        out = jaxgen.generate(model, ids, mask, key=jax.random.key(seed), do_sample=True, max_new_tokens=N,
                              **config)
        kwargs, sampler = sampling_kwargs(uniforms_for(out.keys, N), ids.shape[1], **config)
        with torch.no_grad():
            hf_out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                 max_new_tokens=N, pad_token_id=0, **kwargs)
        hf_new = hf_out[:, ids.shape[1]:].numpy()
        jax_new = np.asarray(out.new_tokens)[:, :hf_new.shape[1]]
        np.testing.assert_array_equal(jax_new, hf_new, err_msg=f"seed {seed}, {config}")
        # transformers went through the sampler at every step it generated.
        for row in range(2):
            n = int(out.num_generated[row])
            np.testing.assert_array_equal(sampler.chosen[row, :n], jax_new[row, :n])
