"""Exact answers to test against: Gaussian-mixture data, whose every noised marginal is known.

If x₀ ∼ Σ_k π_k N(m_k, C_k), then x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (Ho et al. 2020, Eq. 4) is again
a Gaussian mixture, p(x_t) = Σ_k π_k N(√ᾱ_t m_k, ᾱ_t C_k + (1 − ᾱ_t) I). So the score
∇ log p(x_t), the optimal ε̂(x_t, t) = E[ε | x_t] = −√(1 − ᾱ_t) ∇ log p(x_t) and
E[x₀ | x_t] are all closed-form: :func:`mixture_denoiser` is the model a perfect training
run would produce, and every sampler fed it must reproduce the mixture. EDM's noising x₀ + σ ε and
flow matching's (1 − t) x₀ + t ε are of the same kind, so their ideal denoiser and velocity are
closed-form too (:func:`mixture_edm_denoiser`, :func:`mixture_flow_velocity`), and for one Gaussian
N(μ, s² I) so are their probability-flow ODEs (:func:`gaussian_edm_ode`, :func:`gaussian_flow_ode`).

Vectors are the flattened example: an (N, D) batch, or any (N, …) batch with D = ∏ …
(an (N,) batch is D = 1).
"""
from __future__ import annotations

import numpy as np


class GaussianMixture:
    """The distribution Σ_k π_k N(m_k, C_k) in D dimensions.

    ``means`` (K, D), ``covariances`` (K, D, D), ``weights`` (K,) summing to 1 (equal if None).
    """

    def __init__(self, means, covariances, weights=None):
        self.means = np.atleast_2d(np.asarray(means, dtype=np.float64))
        K, D = self.means.shape
        self.covariances = np.asarray(covariances, dtype=np.float64).reshape(K, D, D)
        self.weights = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights.shape != (K,) or not np.isclose(self.weights.sum(), 1.0) or np.any(self.weights <= 0):
            raise ValueError(f"weights must be {K} positive numbers summing to 1, got {self.weights}")
        if np.any(np.linalg.eigvalsh(self.covariances) <= 0):
            raise ValueError("every covariance must be symmetric positive definite")

    @classmethod
    def isotropic(cls, means, std, weights=None):
        """Components N(m_k, std² I) with one shared scalar ``std``."""
        means = np.atleast_2d(np.asarray(means, dtype=np.float64))
        K, D = means.shape
        return cls(means, np.broadcast_to(std**2 * np.eye(D), (K, D, D)), weights)

    @classmethod
    def on_circle(cls, modes=8, radius=1.0, std=0.05):
        """``modes`` equal-weight isotropic Gaussians on a circle: :func:`minidiff.toy.gaussian_mixture`'s law."""
        angle = 2 * np.pi * np.arange(modes) / modes
        return cls.isotropic(radius * np.stack([np.cos(angle), np.sin(angle)], axis=1), std)

    @property
    def dim(self):
        return self.means.shape[1]

    def mean(self):
        """E[x] = Σ_k π_k m_k."""
        return self.weights @ self.means

    def sample(self, n, rng):
        """(n, D) float64 draws, and the component of each (n,)."""
        rng = np.random.default_rng(rng)
        components = rng.choice(len(self.weights), size=n, p=self.weights)
        factors = np.linalg.cholesky(self.covariances)[components]
        noise = rng.standard_normal((n, self.dim))
        return self.means[components] + np.einsum("nij,nj->ni", factors, noise), components

    def noised(self, alpha_bar):
        """The law of √ᾱ x + √(1 − ᾱ) ε: the mixture of N(√ᾱ m_k, ᾱ C_k + (1 − ᾱ) I) (Ho et al. 2020, Eq. 4)."""
        return self.scaled(np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar))

    def scaled(self, a, b):
        """The law of a x + b ε, ε ∼ N(0, I): the mixture of N(a m_k, a² C_k + b² I)."""
        return GaussianMixture(a * self.means, a**2 * self.covariances + b**2 * np.eye(self.dim), self.weights)

    def posterior_means(self, x, a, b):
        """(E[x₀ | x], E[ε | x]) for x = a x₀ + b ε, x₀ from this mixture, points x (N, D).

        Each component's posterior mean weighted by its responsibility for x under the law of
        :meth:`scaled`: with S_k = a² C_k + b² I, E[x₀ | x, k] = m_k + a C_k S_k⁻¹(x − a m_k) and
        E[ε | x, k] = b S_k⁻¹(x − a m_k) (Gaussian conditioning; Tweedie's formula).
        """
        responsibilities, whitened = self.scaled(a, b)._terms(x)  # p(k | x), S_k⁻¹(x − a m_k)
        x0 = np.einsum("nk,nki->ni", responsibilities, self.means[None] + a * np.einsum("kij,nkj->nki",
                                                                                       self.covariances, whitened))
        return x0, b * np.einsum("nk,nki->ni", responsibilities, whitened)

    def _terms(self, x):
        """(responsibilities (N, K), S_k⁻¹(x − m_k) (N, K, D)) for points x (N, D)."""
        precisions = np.linalg.inv(self.covariances)
        _, logdets = np.linalg.slogdet(self.covariances)
        centred = x[:, None, :] - self.means[None]  # (N, K, D)
        whitened = np.einsum("kij,nkj->nki", precisions, centred)
        log_joint = np.log(self.weights) - 0.5 * (logdets + np.einsum("nki,nki->nk", centred, whitened))
        log_joint -= log_joint.max(axis=1, keepdims=True)  # log-sum-exp: no underflow far from every mode
        responsibilities = np.exp(log_joint)
        return responsibilities / responsibilities.sum(axis=1, keepdims=True), whitened

    def responsibilities(self, x):
        """p(k | x) for points x (N, D): which component each point most likely came from."""
        return self._terms(x)[0]

    def score(self, x):
        """∇ log p(x) = −Σ_k p(k | x) C_k⁻¹(x − m_k) for points x (N, D)."""
        responsibilities, whitened = self._terms(x)
        return -np.einsum("nk,nki->ni", responsibilities, whitened)


def model_alphas_cumprod(schedule):
    """ᾱ indexed by the model's own (training) timesteps, the t a sampler calls the model with."""
    lookup = np.full(int(schedule.timesteps.max()) + 1, np.nan)
    lookup[schedule.timesteps] = schedule.alphas_cumprod
    return lookup


def mixture_score(mixture, x_t, alpha_bar):
    """∇ log p(x_t) of the noised mixture at ᾱ, for x_t (N, …) and one ᾱ."""
    flat = np.asarray(x_t, dtype=np.float64).reshape(len(x_t), -1)
    return mixture.noised(alpha_bar).score(flat).reshape(x_t.shape)


def mixture_denoiser(mixture, schedule):
    """The optimal ``model(x_t, t) -> ε̂`` for data from ``mixture`` under ``schedule``.

    ε̂ = E[ε | x_t] = −√(1 − ᾱ_t) ∇ log p(x_t) (Dhariwal & Nichol 2021, Eq. 11); t are the
    model's timesteps (a respaced schedule's ``timesteps``), one ᾱ per distinct t.
    """
    alphas_cumprod = model_alphas_cumprod(schedule)

    def model(x_t, t):
        t = np.asarray(t)
        eps = np.empty(x_t.shape, dtype=np.float64)
        for step in np.unique(t):
            rows = t == step
            alpha_bar = alphas_cumprod[step]
            eps[rows] = -np.sqrt(1.0 - alpha_bar) * mixture_score(mixture, x_t[rows], alpha_bar)
        return eps.astype(x_t.dtype, copy=False)

    return model


# EDM and flow matching -------------------------------------------------------------------------
#
# EDM noises x = x₀ + σ ε (Karras et al. 2022, Eq. 7's setting) and flow matching x_t = (1 − t) x₀ + t ε
# (Liu et al. 2023, Eq. 1): both are a x₀ + b ε, so their ideal models are posterior means too.


def _per_level(x, levels, field):
    """``field(flat x rows, level)`` evaluated once per distinct level, reassembled in x's shape and dtype."""
    levels = np.asarray(levels, dtype=np.float64)
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out = np.empty_like(flat)
    for level in np.unique(levels):
        rows = levels == level
        out[rows] = field(flat[rows], level)
    return out.reshape(x.shape).astype(x.dtype, copy=False)


def gaussian_edm_denoiser(mean, std):
    """EDM's ideal denoiser for data N(μ, s² I): D*(x; σ) = E[x₀ | x₀ + σ ε = x] = (s² x + σ² μ)/(s² + σ²)
    (Karras et al. 2022, Eq. 2's minimiser; Gaussian conditioning)."""
    def denoise(x, sigma):
        sigma2 = np.asarray(sigma, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1)) ** 2
        return ((std**2 * x + sigma2 * mean) / (std**2 + sigma2)).astype(x.dtype, copy=False)

    return denoise


def gaussian_edm_ode(x, sigma_from, sigma_to, mean, std):
    """The exact solution of EDM's probability-flow ODE dx/dσ = (x − D*(x; σ))/σ (Karras et al. 2022, Eqs. 1 and 3)
    for data N(μ, s² I): x(σ_to) = μ + (x(σ_from) − μ) √((s² + σ_to²)/(s² + σ_from²)), since x − D* = σ²(x − μ)/(s² + σ²)."""
    return mean + (x - mean) * np.sqrt((std**2 + sigma_to**2) / (std**2 + sigma_from**2))


def gaussian_flow_velocity(mean, std):
    """Flow matching's ideal velocity for data N(μ, s² I): v*(x, t) = E[ε − x₀ | x_t = x]
    = ((t − (1 − t) s²)(x − (1 − t) μ))/((1 − t)² s² + t²) − μ (Liu et al. 2023, Eq. 1's minimiser)."""
    def velocity(x, t):
        t = np.asarray(t, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
        variance = (1 - t) ** 2 * std**2 + t**2
        return ((t - (1 - t) * std**2) * (x - (1 - t) * mean) / variance - mean).astype(x.dtype, copy=False)

    return velocity


def gaussian_flow_ode(z, t, mean, std):
    """The exact flow of dx/dt = v*(x, t) for data N(μ, s² I) (Liu et al. 2023, Eq. 1): the trajectory through
    z at t = 1 is x_t = (1 − t) μ + √((1 − t)² s² + t²) z, so the ODE maps noise z to μ + s z at t = 0."""
    return (1 - t) * mean + np.sqrt((1 - t) ** 2 * std**2 + t**2) * z


def mixture_edm_denoiser(mixture):
    """EDM's ideal denoiser for data from ``mixture``: D*(x; σ) = E[x₀ | x₀ + σ ε = x], the posterior-weighted
    mean of :meth:`GaussianMixture.posterior_means` (Karras et al. 2022, Eq. 2's minimiser)."""
    def denoise(x, sigma):
        return _per_level(x, sigma, lambda rows, level: mixture.posterior_means(rows, 1.0, level)[0])

    return denoise


def mixture_flow_velocity(mixture):
    """Flow matching's ideal velocity for data from ``mixture``: v*(x, t) = E[ε | x] − E[x₀ | x] at
    x = (1 − t) x₀ + t ε, from :meth:`GaussianMixture.posterior_means` (Liu et al. 2023, Eq. 1's minimiser)."""
    def velocity(x, t):
        def field(rows, level):
            x0, eps = mixture.posterior_means(rows, 1.0 - level, level)
            return eps - x0

        return _per_level(x, t, field)

    return velocity


def assert_samples_match_mixture(samples, mixture, tolerance=4.5):
    """Assert that ``samples`` (N, D) reproduce ``mixture``'s weights, means and covariances.

    Each sample is assigned to its most probable component; then every weight, mean
    coordinate and covariance entry must lie within ``tolerance`` standard errors of the truth
    (binomial for weights, s/√n for means, √((C_ij² + C_ii C_jj)/n) for covariances). Meant
    for well-separated components, where the assignment is nearly always right.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if not np.all(np.isfinite(samples)):
        raise AssertionError("samples are not all finite")
    N = len(samples)
    assigned = mixture.responsibilities(samples).argmax(axis=1)
    for k, (weight, mean, covariance) in enumerate(zip(mixture.weights, mixture.means, mixture.covariances)):
        members = samples[assigned == k]
        n = len(members)
        weight_z = (n / N - weight) / np.sqrt(weight * (1 - weight) / N)
        if not abs(weight_z) < tolerance or n < 2:
            raise AssertionError(f"component {k}: weight {n / N:.4f}, expected {weight:.4f} ({weight_z:+.1f} s.e.)")
        mean_z = (members.mean(axis=0) - mean) / np.sqrt(np.diag(covariance) / n)
        if not np.all(np.abs(mean_z) < tolerance):
            raise AssertionError(f"component {k}: mean {members.mean(axis=0)}, expected {mean} ({mean_z} s.e.)")
        variances = np.diag(covariance)
        cov_z = (np.cov(members.T).reshape(covariance.shape) - covariance) / np.sqrt(
            (covariance**2 + np.outer(variances, variances)) / n)
        if not np.all(np.abs(cov_z) < tolerance):
            raise AssertionError(f"component {k}: covariance off by {cov_z.ravel()} s.e., expected {covariance.ravel()}")
