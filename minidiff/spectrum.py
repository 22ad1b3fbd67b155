"""The spectral view of diffusion: which spatial frequencies the forward process drowns first,
and which the reverse process settles first.

Noise is white: with the orthonormal 2-D Fourier transform, N(0, I) has expected power 1 at every
frequency. Images are not: their power falls steeply with frequency. So in
x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (Ho et al. 2020, Eq. 4) the signal-to-noise ratio of one frequency
band f is

    SNR_t(f) = ᾱ_t P_x₀(f) / (1 − ᾱ_t),

the schedule's SNR (Kingma et al. 2021, Eq. 2) times the data's power in that band: the fine
detail (high f, little power) sinks below the noise early in the forward process, the coarse
layout (low f) only near the end. Run backwards, the sampler decides the coarse layout first and
the detail last — "approximate autoregression in the frequency domain" (Dieleman 2024,
"Diffusion is spectral autoregression", sander.ai; Rissanen et al. 2023, "Generative Modelling with
Inverse Heat Dissipation"). The cosine schedule (Nichol & Dhariwal 2021, §3.2) keeps ᾱ high
for longer: on MNIST every band stays above the noise longer, the finer ones about twice as many steps as under the
linear schedule, which leaves more of the chain to the detail. ``python -m minidiff figures RUN``
draws both, and how a trained model's x̂₀ settles band by band.
"""
from __future__ import annotations

import numpy as np


def _bands(height: int, width: int):
    """(band index of each frequency (H, W), number of bands, mask of the frequencies in a band)."""
    k_y, k_x = np.meshgrid(np.fft.fftfreq(height) * height, np.fft.fftfreq(width) * width, indexing="ij")
    band = np.round(np.hypot(k_y, k_x)).astype(int)  # (H, W): the radius of each frequency
    bands = min(height, width) // 2 + 1
    return band, bands, band < bands  # the corners beyond the inscribed circle have no full ring


def _band_sums(values, band, bands, keep) -> np.ndarray:
    return np.bincount(band[keep], weights=values[keep], minlength=bands)


def radial_power_spectrum(images) -> np.ndarray:
    """Mean power per radial frequency band of (N, C, H, W) images: (⌊min(H, W)/2⌋ + 1,) bands.

    Band r holds the frequencies (k_y, k_x) with round(√(k_y² + k_x²)) = r, in cycles per image;
    the transform is orthonormal, so white noise of variance 1 has power 1 in every band.
    """
    images = np.asarray(images, dtype=np.float64)
    height, width = images.shape[-2:]
    power = np.abs(np.fft.fft2(images, norm="ortho")) ** 2  # (N, C, H, W)
    power = power.reshape(-1, height, width).mean(axis=0)  # (H, W): averaged over images and channels
    band, bands, keep = _bands(height, width)
    return _band_sums(power, band, bands, keep) / np.bincount(band[keep], minlength=bands)


def band_correlation(images, reference) -> np.ndarray:
    """Per frequency band, how far ``images`` already are ``reference`` (paired, (N, C, H, W) each):
    Re Σ X·conj(R) / √(Σ|X|² Σ|R|²) over the band's Fourier coefficients and all images, in [−1, 1].

    1 means the band is settled (equal up to a positive scale); 0, unrelated. Along a reverse chain,
    with the final sample as the reference, it shows which bands the sampler has decided so far.
    """
    images, reference = (np.fft.fft2(np.asarray(a, dtype=np.float64), norm="ortho") for a in (images, reference))
    height, width = images.shape[-2:]
    band, bands, keep = _bands(height, width)

    def per_band(values):  # (N, C, H, W) → summed over images and channels, then per band
        return _band_sums(values.reshape(-1, height, width).sum(axis=0), band, bands, keep)

    cross = per_band(np.real(images * np.conj(reference)))
    return cross / np.sqrt(per_band(np.abs(images) ** 2) * per_band(np.abs(reference) ** 2))


def forward_snr_per_band(schedule, data_spectrum) -> np.ndarray:
    """SNR_t(f) = ᾱ_t P_x₀(f)/(1 − ᾱ_t) for every index t and band f: (T, bands) (see the module docstring)."""
    return schedule.snr[:, None] * np.asarray(data_spectrum)[None, :]


def band_crossings(snr_per_band) -> np.ndarray:
    """For each band, the first index t at which its SNR falls below 1 (T where it never does)."""
    below = snr_per_band < 1.0  # (T, bands)
    return np.where(below.any(axis=0), below.argmax(axis=0), len(snr_per_band))
