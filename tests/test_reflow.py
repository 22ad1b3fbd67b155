"""Reflow against exact answers: for Gaussian data N(μ, s²) the 1-rectified flow pairs ε with μ + s ε,
after one reflow the velocity is constant along every path (straightness 0), and one Euler step is exact."""
import numpy as np

from minidiff import reflow
from minidiff.autograd import Tensor
from minidiff.objectives import flow
from minidiff.oracles import gaussian_flow_ode, gaussian_flow_velocity, gaussian_reflow_velocity

MU, S = 0.5, 0.3


def pairs(n=512, seed=0):
    noise = np.random.default_rng(seed).standard_normal((n, 2))
    x0 = flow.sample(gaussian_flow_velocity(MU, S), flow.flow_times(400), noise, solver="heun")
    return x0, noise


def test_the_flow_pairs_noise_with_its_exact_image():
    x0, noise = pairs()
    # Heun's last step onto t = 0 is Euler's (minidiff.objectives.flow.sample): first order there.
    np.testing.assert_allclose(x0, gaussian_flow_ode(noise, 0.0, MU, S), atol=1e-4)


def test_the_reflowed_velocity_fits_the_pairs_exactly_and_the_first_does_not():
    noise = np.random.default_rng(0).standard_normal((512, 2))
    x0 = gaussian_flow_ode(noise, 0.0, MU, S)  # the exact pairs

    def loss(velocity):
        model = lambda x, label: Tensor(velocity(x.data if isinstance(x, Tensor) else x, label / flow.NOISE_LABEL_SCALE))
        return flow.training_loss(model, x0, np.random.default_rng(1), noise=noise).loss.item()

    assert loss(gaussian_reflow_velocity(MU, S)) < 1e-9  # 0 up to the loss's float32 path
    assert loss(gaussian_flow_velocity(MU, S)) > 1e-3


def test_one_reflow_straightens_the_flow_and_one_euler_step_is_exact():
    noise = np.random.default_rng(2).standard_normal((512, 2))
    before, _ = reflow.straightness(gaussian_flow_velocity(MU, S), noise)
    after, z0 = reflow.straightness(gaussian_reflow_velocity(MU, S), noise)
    assert before > 0.05 and after < 1e-20
    exact = gaussian_flow_ode(noise, 0.0, MU, S)
    np.testing.assert_allclose(z0, exact, atol=1e-12)
    np.testing.assert_allclose(reflow.one_euler_step(gaussian_reflow_velocity(MU, S), noise), exact, atol=1e-12)
    one_step_before = reflow.one_euler_step(gaussian_flow_velocity(MU, S), noise)
    assert np.abs(one_step_before - exact).max() > 0.1  # the bent flow's single step lands elsewhere
