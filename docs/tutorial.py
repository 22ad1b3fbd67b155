# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Diffusion from scratch with minidiff
#
# A first walk through a diffusion model, from one MNIST digit to generated ones, with minidiff's own
# functions and nothing else: the forward process that turns a digit into noise, the training loss
# that teaches a small U-Net to undo it (Algorithm 1 of Ho et al. 2020), and the sampler that runs it
# backwards from pure noise (their Algorithm 2). Every equation is quoted from
# [math.md](math.md), which says where each one lives in the code; [derivations.md](derivations.md)
# derives them. Letters follow math.md's notation table: the papers count steps t = 1, …, T, the code
# counts t = 0, …, T − 1, and the array entry at code index i is the papers' step i + 1.
#
# Run it as a script (`python docs/tutorial.py`; 26 minutes on 2 cores shared with other jobs: the training is
# most of it), or open it as a notebook with jupytext. It writes its pictures to `docs/tutorial/`,
# where the ones from a full run are committed. `MINIDIFF_TUTORIAL_TINY=1` shrinks everything so that
# the test suite runs it in seconds (`tests/test_tutorial.py`); the pictures are then noise.
# What the full run printed is in `docs/tutorial/output.txt`.
#
# The digits come from `../shared/data/mnist` (the MNIST test set), or from wherever `$MINIDIFF_DATA`
# points; `MINIDIFF_TUTORIAL_OUT` redirects the pictures.

# %%
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from minidiff.backend import performance_settings
from minidiff.datasets import load_dataset
from minidiff.diffusion import predict_x0_from_eps, q_sample, q_step, training_loss
from minidiff.images import save_image_grid
from minidiff.optim import Adam
from minidiff.sampling import ddim_sample, ddpm_sample
from minidiff.schedule import NoiseSchedule
from minidiff.unet import UNet, as_denoiser

TINY = os.environ.get("MINIDIFF_TUTORIAL_TINY") == "1"
HERE = Path(globals().get("__file__", "docs/tutorial.py")).resolve().parent
OUT = Path(os.environ.get("MINIDIFF_TUTORIAL_OUT", HERE / "tutorial"))
DATA = [HERE.parent / ".." / "shared" / "data" / "mnist", None]  # None: $MINIDIFF_DATA, then the cache

T = 30 if TINY else 200  # steps of the forward process
TRAIN_STEPS = 2 if TINY else 1200
BATCH = 2 if TINY else 16
SAMPLES = 2 if TINY else 8
DIGIT = 0  # train on one class: a tiny U-Net learns it in minutes on a CPU
rng = np.random.default_rng(0)
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. One digit
#
# MNIST images are 28×28 grey levels; minidiff scales them to [−1, 1], the range the decoder of
# Ho et al. 2020 (Eq. 13) assumes. Call one of them x₀.

# %%
def load_digits():
    for data_dir in DATA:
        try:
            return load_dataset("mnist", split="test", data_dir=data_dir, download=False)
        except Exception:  # not in this folder: try the next one
            continue
    raise FileNotFoundError("MNIST not found: put it in ../shared/data/mnist or point $MINIDIFF_DATA at it")


images, labels = load_digits()
digits = images[labels == DIGIT]
x0 = digits[:1]  # (1, 1, 28, 28)
print(f"{len(digits)} images of the digit {DIGIT}; x0 has shape {x0.shape}, values in [{x0.min()}, {x0.max()}]")
save_image_grid(x0, OUT / "digit.png", scale=4)

# %% [markdown]
# ![x₀](tutorial/digit.png)
#
# ## 2. The forward process: noise, one step at a time
#
# The forward process adds a little Gaussian noise at every step (math.md, Ho et al. 2020, Eq. 2):
#
# > q(x_t | x_{t−1}) = N(x_t; √(1 − β_t) x_{t−1}, β_t I), the forward process
#
# β_t is the schedule: here linear in t, from 10⁻⁴ to 0.02 at T = 1000 and scaled by 1000/T for a
# shorter chain, so that it still ends in noise. `q_step` is this line; run it T times:

# %%
schedule = NoiseSchedule.linear(T, scale_to_T=True)
shown = np.linspace(0, T - 1, 8).round().astype(int)  # 8 code indices from the first step to the last

x, chain = x0, []
for t in range(T):
    x = q_step(schedule, x, np.array([t]), rng.standard_normal(x0.shape).astype(np.float32))
    if t in shown:
        chain.append(x[0])

# %% [markdown]
# Adding independent Gaussians gives a Gaussian, so t steps collapse into one jump
# (math.md, Ho et al. 2020, Eq. 4; derivations.md, D1):
#
# > q(x_t | x₀) = N(x_t; √ᾱ_t x₀, (1 − ᾱ_t) I), ᾱ_t = ∏_{s≤t} (1 − β_s)
#
# `q_sample` is that jump, x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε. The two rows below are the same process: the
# top one stepped with Eq. 2, the bottom one jumped with Eq. 4 (other noise, the same law).

# %%
jumps = q_sample(schedule, np.repeat(x0, len(shown), axis=0), shown, rng.standard_normal((len(shown),) + x0.shape[1:]))
save_image_grid(np.concatenate([np.stack(chain), jumps]), OUT / "forward.png", nrow=len(shown), scale=3)
print("code indices shown:", shown.tolist())
print("√ᾱ_t there:", np.round(schedule.sqrt_alphas_cumprod[shown], 3).tolist())

# %% [markdown]
# ![the forward process, by Eq. 2 (top) and Eq. 4 (bottom)](tutorial/forward.png)
#
# How fast the digit fades is the schedule's whole story: ᾱ_t is the fraction of x₀'s variance left,
# and SNR_t = ᾱ_t/(1 − ᾱ_t) the signal-to-noise ratio (math.md, Kingma et al. 2021, Eq. 2). The linear
# schedule drowns the digit early; the cosine one (Nichol & Dhariwal 2021, Eq. 17) keeps ᾱ high for
# longer. minidiff draws plots with Pillow only, so here is ᾱ_t against t by hand:

# %%
def plot_curves(curves, path, size=(360, 200), margin=20):
    """Each curve (values in [0, 1] over its index) as a polyline on one white picture, colours in order."""
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    width, height = size[0] - 2 * margin, size[1] - 2 * margin
    draw.rectangle([margin, margin, margin + width, margin + height], outline="grey")
    for values, colour in zip(curves, ["black", "red", "blue"]):
        xs = margin + width * np.arange(len(values)) / (len(values) - 1)
        ys = margin + height * (1 - np.asarray(values))
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
    picture.save(path)


plot_curves([schedule.alphas_cumprod, NoiseSchedule.cosine(T).alphas_cumprod], OUT / "alphas_cumprod.png")

# %% [markdown]
# ![ᾱ_t against t: linear (black), cosine (red)](tutorial/alphas_cumprod.png)
#
# ## 3. Algorithm 1: teach a U-Net to predict the noise
#
# Running the chain backwards needs p_θ(x_{t−1} | x_t), and the variational bound on −log p_θ(x₀)
# (math.md, Ho et al. 2020, Eqs. 3–12; derivations.md, D3) comes down to one regression, L_simple
# (Ho et al. 2020, Eq. 14):
#
# > L_simple = E_{t, x₀, ε}[‖ε − ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t)‖²]
#
# Algorithm 1 repeats: draw x₀ from the data, t uniformly, ε ∼ N(0, I), and take a gradient step on
# that squared error. `training_loss` is lines 2–5 on one screen; the loop around it is the rest.
# The model is minidiff's U-Net in its `tiny` preset (177k parameters), and ε_θ(x_t, t) is its output.
# `performance_settings()` gives the convolutions the cores, as the command line does (the same
# numbers, only faster).

# %%
model = UNet.from_preset("tiny")
optimizer = Adam(model.parameters(), lr=2e-3)
losses, start = [], time.perf_counter()
with performance_settings():
    for step in range(TRAIN_STEPS):
        batch = digits[rng.integers(0, len(digits), size=BATCH)]  # line 2: x₀ ∼ q(x₀)
        draw = training_loss(model, schedule, batch, rng)  # lines 3–4: t, ε, and ‖ε − ε_θ(x_t, t)‖²
        optimizer.zero_grad()
        draw.loss.backward()  # line 5: ∇_θ of the loss …
        optimizer.step()  # … and the step
        losses.append(float(draw.loss.data))
        if step % max(1, TRAIN_STEPS // 6) == 0 or step == TRAIN_STEPS - 1:
            print(f"step {step:4d}  loss {np.mean(losses[-20:]):.4f}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)

smoothed = np.convolve(losses, np.ones(10) / 10, mode="valid") if len(losses) >= 10 else np.asarray(losses)
plot_curves([smoothed / max(smoothed.max(), 1e-12)], OUT / "loss.png")

# %% [markdown]
# ![the loss, smoothed and scaled to its maximum](tutorial/loss.png)
#
# A network that predicts ε predicts x₀ too: solve x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε for x₀
# (math.md, Song et al. 2021, Eq. 9):
#
# > f_θ(x_t) = (x_t − √(1 − ᾱ_t) ε_θ(x_t))/√ᾱ_t, the predicted x₀
#
# Below, a held-out zero noised to each of the 8 code indices (top), and the model's x̂₀ from it
# (bottom). Up to moderate noise x̂₀ is the zero, blurred more as the noise grows; at the noisiest
# levels x̂₀ turns to speckle, because Eq. 9 divides by √ᾱ_t (0.02 and 0.006 in the last two columns)
# and so magnifies every error of ε̂. That is why the samplers clip x̂₀ to [−1, 1], and one reason to
# predict v or x₀ instead (math.md, "Parameterisations and weights").

# %%
denoiser = as_denoiser(model)  # the U-Net as a function of arrays, model(x_t, t) → ε̂
held_out = np.repeat(digits[-1:], len(shown), axis=0)
noisy = q_sample(schedule, held_out, shown, rng.standard_normal(held_out.shape).astype(np.float32))
x0_hat = predict_x0_from_eps(schedule, noisy, shown, denoiser(noisy, shown))
save_image_grid(np.concatenate([noisy, np.clip(x0_hat, -1, 1)]), OUT / "denoise.png", nrow=len(shown), scale=3)

# %% [markdown]
# ![x_t (top) and the model's x̂₀ (bottom)](tutorial/denoise.png)
#
# ## 4. Algorithm 2: from noise to digits
#
# Sampling runs the chain backwards from pure noise, each step a draw from the model's
# p_θ(x_{t−1} | x_t) (math.md, Ho et al. 2020, Algorithm 2 and Eq. 11):
#
# > x_T ∼ N(0, I); for t = T..1: z ∼ N(0, I) if t > 1 else 0, x_{t−1} = μ_θ(x_t, t) + σ_t z
# >
# > μ_θ(x_t, t) = (x_t − β_t/√(1 − ᾱ_t) ε_θ(x_t, t))/√α_t
#
# with σ_t² = β̃_t, the posterior variance (Ho et al. 2020, §3.2). `ddpm_sample` is that loop; with
# `return_trajectory=True` it also hands back x_t and x̂₀ at every step.

# %%
with performance_settings():
    samples, trajectory = ddpm_sample(denoiser, schedule, (SAMPLES, 1, 28, 28), rng=np.random.default_rng(1),
                                      return_trajectory=True)
save_image_grid(samples, OUT / "samples.png", nrow=8, scale=3)
kept = np.linspace(0, len(trajectory) - 1, 8).round().astype(int)
rows = [np.stack([trajectory[i].x_t[0] for i in kept]), np.stack([np.clip(trajectory[i].x0_hat[0], -1, 1) for i in kept])]
save_image_grid(np.concatenate(rows), OUT / "trajectory.png", nrow=8, scale=3)
print(f"{len(trajectory)} steps, one model call each")

# %% [markdown]
# ![8 samples](tutorial/samples.png)
#
# After 1200 steps on a CPU (the committed pictures): zeros, and fragments of zeros; more training
# sharpens them, as the README's main job does for all ten digits.
#
# One sample on its way down (top: x_t at 8 of the steps; bottom: the model's x̂₀ there). The
# coarse shape is settled first, the strokes last:
#
# ![x_t and x̂₀ along the reverse chain](tutorial/trajectory.png)
#
# ## 5. Fewer steps: DDIM
#
# The same model samples in far fewer steps with DDIM (math.md, Song et al. 2021, Eq. 12; DDIM's α is
# DDPM's ᾱ):
#
# > x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ_t²) ε_θ(x_t) + σ_t z
#
# With σ_t = 0 it is deterministic, the Euler step of an ODE whose solution has the same marginals as
# the chain (derivations.md, D5). Twenty steps instead of T:

# %%
with performance_settings():
    fast = ddim_sample(denoiser, schedule, (SAMPLES, 1, 28, 28), steps=5 if TINY else 20, rng=np.random.default_rng(1))
save_image_grid(fast, OUT / "ddim.png", nrow=8, scale=3)

# %% [markdown]
# ![8 DDIM samples in 20 steps](tutorial/ddim.png)
#
# ## Where next
#
# - [derivations.md](derivations.md): why each line above is what it is, one checked step at a time.
# - [math.md](math.md): every equation minidiff implements, and the function that does.
# - The README's main job trains a U-Net on all ten digits with the recipe that won the race at an
#   equal CPU budget: flow matching with logit-normal t, the lighter `mnist-lite` preset, labels.
