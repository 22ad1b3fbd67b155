"""The DDPM U-Net: DESIGN.md's parameter count, shapes, float64 gradients, conditioning, input checks."""
import math

import numpy as np
import pytest

import minidiff
from minidiff import Tensor
from minidiff.flops import count_flops
from minidiff.gradcheck import gradcheck
from minidiff.backbones import as_denoiser
from minidiff.unet import PRESETS, UNet, timestep_embedding

# Small enough for float64 finite differences, yet with every kind of block: attention at 4×4
# (down, middle and up), one Downsample/Upsample pair, skip concatenations and class labels.
SMALL = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
             num_groups=2, image_size=8)


def perturb_parameters(model, rng, scale=0.1):
    """Move every parameter off its initial value.

    The zero-initialised convolutions (see minidiff.unet) make a fresh model's output identically
    zero, which would turn gradient and conditioning checks into 0 == 0.
    """
    for param in model.parameters():
        param.data += rng.normal(0.0, scale, param.shape).astype(param.dtype)
    return model


def small_model(**overrides):
    rng = np.random.default_rng(0)
    model = UNet(**{**SMALL, **overrides}, rng=rng, dtype=np.float64)
    return perturb_parameters(model, rng)


# ------------------------------------------------------------------ architecture
def test_mnist_preset_has_design_parameter_count():
    assert UNet.from_preset("mnist").num_parameters() == 1_623_169


def test_tiny_preset_is_small_but_has_attention_and_resampling():
    model = UNet.from_preset("tiny")
    names = {type(m).__name__ for m in model.modules()}
    assert {"AttentionBlock", "Downsample", "Upsample"} <= names
    assert model.num_parameters() < 200_000


def test_lite_preset_is_the_mnist_preset_with_one_resblock_per_level():
    lite, full = UNet.from_preset("mnist-lite"), UNet.from_preset("mnist")
    assert {**lite.config, "num_res_blocks": 2} == full.config
    assert lite.num_parameters() == 1_112_801 and full.num_parameters() == 1_623_169
    x = Tensor(np.zeros((1, 1, 28, 28), np.float32))
    with count_flops() as lite_flops:
        lite(x, np.array([0]))
    with count_flops() as full_flops:
        full(x, np.array([0]))
    assert 0.6 < lite_flops.total / full_flops.total < 0.75  # the cheaper step the race buys more steps with


@pytest.mark.parametrize("preset", ["mnist", "mnist-lite", "tiny"])
def test_output_shape_equals_input_shape(preset):
    model = UNet.from_preset(preset)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)))
    out = model(x, np.array([0, 999]))
    assert out.shape == (2, 1, 28, 28) and out.dtype == np.float32


def test_constant_input_is_cast_to_the_parameter_dtype_and_a_differentiated_one_must_match():
    model = UNet(**SMALL)
    assert model(np.zeros((1, 1, 8, 8)), np.array([0])).dtype == np.float32
    with pytest.raises(ValueError, match="float64 requires grad but the parameters are float32"):
        model(Tensor(np.zeros((1, 1, 8, 8)), requires_grad=True), np.array([0]))


def test_other_sizes_that_halve_evenly_are_accepted():
    model = UNet(**SMALL)  # one downsample: any even size
    assert model(Tensor(np.zeros((1, 1, 16, 12))), np.array([3])).shape == (1, 1, 16, 12)


def test_fresh_model_predicts_zero_from_zero_initialised_output_conv():
    out = UNet(**SMALL)(Tensor(np.ones((1, 1, 8, 8))), np.array([5]))
    assert np.all(out.data == 0)


def test_config_rebuilds_the_model_from_a_state_dict():
    model = perturb_parameters(UNet(**SMALL, num_classes=5), np.random.default_rng(1))
    clone = UNet(**model.config)
    clone.load_state_dict(model.state_dict())
    x, t, y = Tensor(np.random.default_rng(2).standard_normal((2, 1, 8, 8))), np.array([1, 2]), np.array([3, 4])
    np.testing.assert_array_equal(clone(x, t, y).data, model(x, t, y).data)
    assert UNet.from_preset("tiny", num_classes=10).config == {**PRESETS["tiny"], "num_classes": 10, "null_class": False,
                                                               "learn_sigma": False}


def test_from_preset_overrides_and_unknown_name():
    assert UNet.from_preset("mnist", dropout=0.1).config["dropout"] == 0.1
    with pytest.raises(ValueError, match="unknown preset 'cifar'.*mnist, mnist-lite, tiny"):
        UNet.from_preset("cifar")


# ------------------------------------------------------------------ timestep embedding
def test_timestep_embedding_matches_the_formula():
    t, dim = np.array([0, 1, 17, 999]), 32
    emb = timestep_embedding(t, dim, dtype=np.float64)
    half = dim // 2
    for row, step in enumerate(t):
        for i in range(half):
            freq = math.exp(-math.log(10000) * i / half)
            assert emb[row, i] == pytest.approx(math.sin(step * freq), abs=1e-12)
            assert emb[row, half + i] == pytest.approx(math.cos(step * freq), abs=1e-12)
    assert timestep_embedding(t, dim).dtype == np.float32


def test_timestep_embedding_odd_dim_pads_with_zero():
    emb = timestep_embedding(np.array([3, 4]), 7)
    assert emb.shape == (2, 7) and np.all(emb[:, -1] == 0)


# ------------------------------------------------------------------ gradients (float64)
def test_gradcheck_wrt_input():
    model = small_model(num_classes=3)
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8))
    t, y = np.array([4, 900]), np.array([0, 2])
    assert gradcheck(lambda x: model(x, t, y), x, mode="directional", directions=3, atol=1e-6, rtol=1e-5)


def test_parameter_gradients_match_central_differences():
    model = small_model(num_classes=3)
    rng = np.random.default_rng(4)
    x = Tensor(rng.standard_normal((2, 1, 8, 8)))
    t, y = np.array([4, 900]), np.array([0, 2])
    projection = rng.standard_normal((2, 1, 8, 8))

    def objective():
        return float(np.sum(model(x, t, y).data * projection))

    (model(x, t, y) * Tensor(projection)).sum().backward()
    params = dict(model.named_parameters())
    checked = [
        "time_embed.0.weight",  # through every ResBlock's time projection
        "label_embed",  # the class lookup (getitem with repeated / missing rows)
        "input_blocks.1.0.conv1.weight",  # a down ResBlock
        "input_blocks.3.1.qkv.weight",  # attention at 4×4
        "middle_block.1.proj.weight",  # a zero-initialised projection
        "output_blocks.1.2.conv.weight",  # the Upsample conv
        "out.1.weight",  # the final conv
    ]
    eps = 1e-6
    for name in checked:
        param = params[name]
        direction = rng.standard_normal(param.shape)
        original = param.data.copy()
        param.data[...] = original + eps * direction
        plus = objective()
        param.data[...] = original - eps * direction
        minus = objective()
        param.data[...] = original
        numeric = (plus - minus) / (2 * eps)
        analytic = float(np.sum(param.grad * direction))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-6), name


# ------------------------------------------------------------------ class conditioning
def test_conditional_output_depends_on_labels():
    model = small_model(num_classes=3)
    x, t = Tensor(np.random.default_rng(5).standard_normal((2, 1, 8, 8))), np.array([10, 10])
    a, b = model(x, t, np.array([0, 0])).data, model(x, t, np.array([1, 0])).data
    assert not np.allclose(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])  # each image sees only its own label


def test_missing_or_unexpected_labels_are_refused():
    x, t = Tensor(np.zeros((2, 1, 8, 8))), np.array([1, 2])
    with pytest.raises(ValueError, match="class-conditional.*pass labels y"):
        small_model(num_classes=3)(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        small_model()(x, t, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\)"):
        small_model(num_classes=3)(x, t, np.array([0]))
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 3\)"):
        small_model(num_classes=3)(x, t, np.array([0, 3]))


# ------------------------------------------------------------------ input checks
def test_size_that_does_not_halve_evenly_is_refused_with_advice():
    model = UNet.from_preset("mnist")
    with pytest.raises(ValueError, match="input 30×30 cannot be halved 2 times evenly; use a size divisible by 4 such as 28 or 32"):
        model(Tensor(np.zeros((1, 1, 30, 30))), np.array([0]))


def test_wrong_channels_and_timestep_shape_are_refused():
    model = UNet.from_preset("tiny")
    with pytest.raises(ValueError, match="3 channels .* takes 1"):
        model(Tensor(np.zeros((1, 3, 28, 28))), np.array([0]))
    with pytest.raises(ValueError, match=r"timesteps of shape \(2,\)"):
        model(Tensor(np.zeros((2, 1, 28, 28))), np.array([0]))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model(Tensor(np.zeros((1, 28, 28))), np.array([0]))


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match=r"attn_resolutions \[5\] .*\(28, 14, 7 for image_size=28\)"):
        UNet(attn_resolutions=(5,))
    with pytest.raises(ValueError, match="image_size=30 cannot be halved 2 times"):
        UNet(image_size=30)


# ------------------------------------------------------------------ samplers' interface
def test_as_denoiser_maps_arrays_to_arrays_without_a_graph():
    model = small_model(num_classes=3)
    x_t = np.random.default_rng(6).standard_normal((2, 1, 8, 8))
    t, y = np.array([3, 7]), np.array([2, 1])
    eps_hat = as_denoiser(model, y=y)(x_t, t)
    assert isinstance(eps_hat, np.ndarray) and eps_hat.shape == x_t.shape
    np.testing.assert_array_equal(eps_hat, model(Tensor(x_t), t, y).data)
    assert minidiff.is_grad_enabled()


def test_dropout_is_active_only_in_training():
    model = small_model(dropout=0.5)
    x, t = Tensor(np.random.default_rng(7).standard_normal((1, 1, 8, 8))), np.array([1])
    assert not np.allclose(model(x, t).data, model(x, t).data)
    model.eval()
    np.testing.assert_array_equal(model(x, t).data, model(x, t).data)
