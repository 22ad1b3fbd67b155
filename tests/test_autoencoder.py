"""The KL autoencoder and the latent space: shapes, q(z|x)'s KL and reparameterisation against
their formulas with float64 gradients, the scale factor that brings the latents to unit std, and
the fingerprint that ties a latent diffusion run to its autoencoder's weights."""
import numpy as np
import pytest

from minidiff import Tensor
from minidiff.autoencoder import PRESETS, AutoencoderKL, DiagonalGaussian, autoencoder_loss, latent_statistics
from minidiff.gradcheck import gradcheck
from minidiff.latent import LatentSpace, fingerprint

rng = np.random.default_rng(0)


@pytest.mark.parametrize("preset, latent", [("kl-f4-tiny", (4, 7, 7)), ("kl-f4", (4, 7, 7)), ("kl-f2", (2, 14, 14))])
def test_encoder_and_decoder_shapes(preset, latent):
    model = AutoencoderKL(**PRESETS[preset], rng=np.random.default_rng(0))
    assert model.latent_shape == latent
    x = rng.uniform(-1, 1, (3, 1, 28, 28))
    posterior = model.encode(x)
    assert posterior.mean.shape == posterior.std.shape == (3, *latent)
    assert model.decode(posterior.mean).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"AutoencoderKL: expected latents \(N, " + ", ".join(map(str, latent))):
        model.decode(np.zeros((1, 3, 5, 5)))


def test_kl_and_reparameterised_sample_match_their_formulas_and_gradients():
    moments, noise = rng.standard_normal((2, 6, 3, 3)), rng.standard_normal((2, 3, 3, 3))
    mean, logvar = moments[:, :3], moments[:, 3:]
    q = DiagonalGaussian(Tensor(moments))
    expected_kl = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(q.kl().data, expected_kl, rtol=1e-12)
    np.testing.assert_allclose(q.sample(Tensor(noise)).data, mean + np.exp(0.5 * logvar) * noise, rtol=1e-12)
    assert gradcheck(lambda m: DiagonalGaussian(m).kl(), moments)
    assert gradcheck(lambda m: DiagonalGaussian(m).sample(Tensor(noise)), moments)


def test_loss_is_reconstruction_plus_beta_kl_and_trains_the_whole_network():
    model = AutoencoderKL(**PRESETS["kl-f4-tiny"], rng=np.random.default_rng(0))
    x = rng.uniform(-1, 1, (2, 1, 28, 28)).astype(np.float32)
    loss, mse, kl = autoencoder_loss(model, x, np.random.default_rng(1), kl_weight=0.5)
    assert loss.item() == pytest.approx(mse + 0.5 * kl, rel=1e-5)
    loss.backward()
    assert all(param.grad is not None for param in model.parameters())


def test_scaled_latents_have_unit_std():
    model = AutoencoderKL(**PRESETS["kl-f4-tiny"], rng=np.random.default_rng(0))
    images = rng.uniform(-1, 1, (64, 1, 28, 28)).astype(np.float32)
    std, mse = latent_statistics(model, images, np.random.default_rng(0), batch=16)
    assert mse > 0
    space = LatentSpace(model, 1.0 / std, run="ae", fingerprint=fingerprint(model.state_dict()))
    z = space.scaled_sample(space.encode(images), np.random.default_rng(5))
    assert z.shape == (64, 4, 7, 7)
    assert z.std() == pytest.approx(1.0, abs=0.02)
    assert space.decode(z).shape == (64, 1, 28, 28) and np.abs(space.decode(z)).max() <= 1


def test_fingerprint_follows_every_weight():
    state = AutoencoderKL(**PRESETS["kl-f4-tiny"], rng=np.random.default_rng(0)).state_dict()
    before = fingerprint(state)
    assert len(before) == 16 and fingerprint(dict(reversed(state.items()))) == before
    name = next(iter(state))
    state[name] = state[name].copy()
    state[name].flat[0] += 1e-7
    assert fingerprint(state) != before
