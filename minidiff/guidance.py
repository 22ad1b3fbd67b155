"""Classifier-free guidance (Ho & Salimans 2021): one network trained with and without its
condition, and at sampling time a push away from the unconditional prediction.

Training (:func:`drop_labels`, their Algorithm 1) replaces each label by the null class ∅ with
probability p_uncond, so the same U-Net learns ε_θ(x_t, c) and ε_θ(x_t, ∅) — ∅ is one more,
learned row of its class embedding (``UNet(num_classes=K, null_class=True)``, index K).
Sampling (:func:`guided_denoiser`, their Eq. 6 and Algorithm 2) wraps the network as the
samplers' ``model(x_t, t)``, so every sampler of :mod:`minidiff.sampling` and :mod:`minidiff.sde`
guides without knowing it.

Paper: Ho & Salimans 2021, "Classifier-Free Diffusion Guidance" (NeurIPS workshop; arXiv 2207.12598).
"""
from __future__ import annotations

import numpy as np

from . import checks
from .autograd import no_grad
from .backend import get_array_module
from .diffusion import model_output_parts
from .backbones import as_denoiser


def drop_labels(labels: np.ndarray, p_uncond: float, null_label: int, rng: np.random.Generator) -> np.ndarray:
    """c ← ∅ with probability ``p_uncond``, independently per example (Ho & Salimans 2021, Algorithm 1, line 3).

    ``null_label`` is ∅'s index in the class embedding. One uniform draw per label from ``rng``
    (the trainer's stream), so a resumed run drops the same labels as one that never stopped.
    """
    dropped = rng.random(len(labels)) < checks.real(p_uncond, "p_uncond", 0.0, 1.0)
    return np.where(dropped, null_label, labels)


def guided_denoiser(model, labels, guidance: float = 0.0):
    r"""``model`` as the samplers' ``model(x_t, t)``, guided towards ``labels`` with weight w = ``guidance``.

    .. math::
        \tilde\varepsilon(x_t, c) = (1 + w)\,\varepsilon_\theta(x_t, c) - w\,\varepsilon_\theta(x_t, \varnothing)

    (Ho & Salimans 2021, Eq. 6; Algorithm 2, line 3). w = 0 is plain conditional sampling and
    runs the conditional branch only; the other common form, ε̃ = s·ε(x, c) + (1 − s)·ε(x, ∅)
    with s = 1 + w (e.g. diffusers' ``guidance_scale``), is the same line. The two branches are
    one forward pass on a batch of 2N: [x_t, x_t] with labels [c, ∅].

    The combination is applied to the raw network output, whatever it predicts. For x₀- and
    v-models this is the same guided sampler as guiding ε: at fixed (x_t, t), ε, x₀ and v are
    affine functions of each other (ε = (x_t − √ᾱ x₀)/√(1 − ᾱ), ε = √(1 − ᾱ) x_t + √ᾱ v), and
    an affine map commutes with a combination whose weights (1 + w) and −w sum to 1. Clipping
    x̂₀ happens after guidance, in :func:`minidiff.diffusion.denoise`. A model with learned
    variances keeps the conditional branch's v (Nichol & Dhariwal 2021, Eq. 15): only the mean is guided.
    """
    guidance = checks.real(guidance, "guidance weight w", 0.0)
    if not guidance:
        return as_denoiser(model, labels)
    if getattr(model, "null_label", None) is None:
        raise ValueError("classifier-free guidance needs a model with a null class (trained with --p-uncond > 0)")
    if labels is None:
        raise ValueError("classifier-free guidance needs class labels to guide towards")
    labels = np.asarray(labels)
    null_labels = np.full_like(labels, model.null_label)

    def denoise(x_t, t):
        xp = get_array_module(x_t)
        with no_grad():  # one forward of 2N: [x_t, x_t] with labels [c, ∅]
            out = model(xp.concatenate([x_t, x_t]), xp.concatenate([t, t]), np.concatenate([labels, null_labels])).data
        conditional, v = model_output_parts(out[: len(x_t)], x_t)
        unconditional, _ = model_output_parts(out[len(x_t):], x_t)
        guided = (1.0 + guidance) * conditional - guidance * unconditional  # Eq. 6
        # a learned variance is not guided: the conditional branch's v, as GLIDE's sampling ``model_fn`` (glide-text2im) does
        return guided if v is None else xp.concatenate([guided, v], axis=1)

    denoise.learned_variance = bool(getattr(model, "learned_variance", False))
    return denoise
