"""The spectral view: the radial power spectrum, the forward process's SNR per frequency band, and
``python -m minidiff figures`` end to end on a tiny run."""
import numpy as np
import pytest
from test_cli import MNIST_DIR, expect_error, train

from minidiff.__main__ import main
from minidiff.datasets import load_dataset
from minidiff.schedule import NoiseSchedule, schedule_by_name
from minidiff.spectrum import band_correlation, band_crossings, forward_snr_per_band, radial_power_spectrum


def test_white_noise_has_unit_power_in_every_band():
    noise = np.random.default_rng(0).standard_normal((400, 1, 28, 28))
    spectrum = radial_power_spectrum(noise)
    assert spectrum.shape == (15,)
    np.testing.assert_allclose(spectrum, 1.0, rtol=0.05)


def test_a_single_frequency_lands_in_its_band():
    y, x = np.mgrid[:28, :28]
    wave = np.cos(2 * np.pi * 5 * x / 28)[None, None]  # 5 cycles per image along x
    spectrum = radial_power_spectrum(wave)
    assert spectrum.argmax() == 5 and spectrum[5] > 100 * np.delete(spectrum, 5).max()


def test_snr_per_band_is_the_schedules_snr_times_the_data_power():
    schedule = NoiseSchedule.cosine(50)
    spectrum = np.array([4.0, 1.0, 0.25])
    snr = forward_snr_per_band(schedule, spectrum)
    np.testing.assert_allclose(snr, schedule.alphas_cumprod[:, None] / (1 - schedule.alphas_cumprod[:, None]) * spectrum)
    crossings = band_crossings(snr)
    for band, t in enumerate(crossings):  # the first t below SNR 1, and above it just before
        assert snr[t, band] < 1 and (t == 0 or snr[t - 1, band] >= 1)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}")
@pytest.mark.filterwarnings("ignore:mnist train files not found")
def test_on_digits_fine_detail_drowns_first_and_the_cosine_schedule_keeps_every_band_longer():
    images, _ = load_dataset("mnist", "auto", MNIST_DIR)
    spectrum = radial_power_spectrum(images[:1000])
    linear, cosine = (band_crossings(forward_snr_per_band(schedule_by_name(name, 1000), spectrum))
                      for name in ("linear", "cosine"))
    assert np.all(np.diff(linear) <= 0) and np.all(np.diff(cosine) <= 0)  # higher bands drown sooner
    assert np.all(cosine > linear) and np.all(cosine[3:] > 1.8 * linear[3:])  # the detail: about twice as long


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}")
@pytest.mark.filterwarnings("ignore:mnist train files not found")
def test_figures_writes_both_pictures_or_says_what_is_missing(tmp_path, capsys, monkeypatch):
    assert train(tmp_path, "--steps", "2", "--sample-every", "0") == 0
    pytest.importorskip("matplotlib", reason="the spectrum figure needs matplotlib (pip install 'minidiff[plot]')")
    assert main(["figures", str(tmp_path), "--n", "4", "--steps", "5", "--out", str(tmp_path / "f")]) == 0
    for name in ("trajectory.png", "spectrum.png"):
        assert (tmp_path / "f" / name).stat().st_size > 1000
    assert "--steps 21 is outside [1, 20]" in expect_error(capsys, ["figures", str(tmp_path), "--steps", "21"])

    def no_matplotlib():
        raise ImportError

    monkeypatch.setattr("minidiff.commands.figures.pyplot", no_matplotlib)
    assert "pip install 'minidiff[plot]'" in expect_error(capsys, ["figures", str(tmp_path)])


def test_band_correlation_is_one_for_the_same_images_at_any_scale_and_near_zero_for_unrelated_ones():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 200, 1, 28, 28))
    np.testing.assert_allclose(band_correlation(a, 3.0 * a), 1.0)
    np.testing.assert_allclose(band_correlation(a, -a), -1.0)
    assert np.abs(band_correlation(a, b)).max() < 0.1
    # a blurred copy keeps the coarse bands and loses the fine ones
    blurred = (a + np.roll(a, 1, -1) + np.roll(a, -1, -1) + np.roll(a, 1, -2) + np.roll(a, -1, -2)) / 5
    correlation = band_correlation(blurred, a)
    assert correlation[1] > 0.95 and correlation[1] > correlation[10]
