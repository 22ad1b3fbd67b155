"""The Diffusion Transformer: patchify/unpatchify, the 2-D sin-cos embedding against its formula,
adaLN-Zero's identity at initialisation, gradients, conditioning and the interface it shares with the U-Net."""
import numpy as np
import pytest

from minidiff import Tensor
from minidiff.dit import PRESETS, DiT, DiTBlock, patchify, sincos_2d_embedding, unpatchify
from minidiff.gradcheck import gradcheck

rng = np.random.default_rng(0)


def perturbed(model, scale=0.1):
    """``model`` with every parameter nudged, so the zero-initialised layers are no longer zero."""
    for param in model.parameters():
        param.data += scale * rng.standard_normal(param.shape).astype(param.dtype)
    return model


@pytest.mark.parametrize("p, shape", [(1, (2, 3, 4, 4)), (2, (2, 3, 6, 4)), (4, (1, 1, 28, 28))])
def test_unpatchify_inverts_patchify(p, shape):
    x = rng.standard_normal(shape)
    tokens = patchify(Tensor(x), p)
    assert tokens.shape == (shape[0], (shape[2] // p) * (shape[3] // p), p * p * shape[1])
    np.testing.assert_array_equal(unpatchify(tokens, p, shape[1], shape[2], shape[3]).data, x)


def test_a_token_is_its_patch_row_major():
    x = rng.standard_normal((1, 2, 4, 6))
    tokens = patchify(Tensor(x), 2).data
    # token 4 is patch row 1, column 1 (3 patches per row): pixels 2..3 × 2..3, flattened (row, column, channel)
    np.testing.assert_array_equal(tokens[0, 4], x[0, :, 2:4, 2:4].transpose(1, 2, 0).reshape(-1))


def test_sincos_2d_embedding_matches_the_formula():
    dim, grid_h, grid_w = 8, 3, 5
    emb = sincos_2d_embedding(dim, grid_h, grid_w)
    assert emb.shape == (grid_h * grid_w, dim)
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    for i in range(grid_h):
        for j in range(grid_w):
            expected = np.concatenate([np.sin(j * omega), np.cos(j * omega), np.sin(i * omega), np.cos(i * omega)])
            np.testing.assert_allclose(emb[i * grid_w + j], expected, rtol=1e-15, atol=1e-15)


def test_every_block_is_the_identity_at_init_and_the_model_outputs_zero():
    model = DiT.from_preset("dit-tiny", num_classes=3, null_class=True, learn_sigma=True)
    x, c = Tensor(rng.standard_normal((2, 49, 32)).astype(np.float32)), Tensor(rng.standard_normal((2, 32)).astype(np.float32))
    for block in model.blocks:
        assert isinstance(block, DiTBlock)
        np.testing.assert_array_equal(block(x, c).data, x.data)
    out = model(rng.standard_normal((2, 1, 28, 28)), np.array([0, 999]), np.array([1, 3]))
    assert out.shape == (2, 2, 28, 28)  # learn_sigma doubles the channels
    assert not out.data.any()


def test_presets_fit_a_two_core_cpu():
    for name in ("dit-s2", "dit-s4"):
        count = DiT.from_preset(name).num_parameters()
        assert 1_000_000 < count < 3_000_000, (name, count)
    assert PRESETS["dit-s2"]["patch_size"] == 2 and PRESETS["dit-s4"]["patch_size"] == 4


def test_gradcheck_wrt_input_and_parameters_in_float64():
    model = perturbed(DiT(in_channels=2, image_size=4, patch_size=2, hidden_size=8, depth=1, num_heads=2,
                          mlp_ratio=2.0, num_classes=2, rng=np.random.default_rng(1), dtype=np.float64))
    t, y, x = np.array([3, 500]), np.array([0, 1]), rng.standard_normal((2, 2, 4, 4))
    assert gradcheck(lambda x: model(x, t, y), x)
    projection = rng.standard_normal((2, 2, 4, 4))
    model.zero_grad()  # gradcheck's backward reached the parameters too
    (model(x, t, y) * Tensor(projection)).sum().backward()

    def objective():
        return float(np.sum(model(x, t, y).data * projection))

    eps = 1e-6
    for name, param in model.named_parameters():  # one random direction per parameter, by central differences
        v, saved = rng.standard_normal(param.shape), param.data
        param.data = saved + eps * v
        plus = objective()
        param.data = saved - eps * v
        minus = objective()
        param.data = saved
        np.testing.assert_allclose(np.sum(param.grad * v), (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-8, err_msg=name)


def test_output_depends_on_labels_time_and_position():
    model = perturbed(DiT.from_preset("dit-tiny", num_classes=3))
    x = rng.standard_normal((1, 1, 28, 28))
    base = model(x, [10], [0]).data
    assert not np.allclose(base, model(x, [10], [1]).data)
    assert not np.allclose(base, model(x, [900], [0]).data)


def test_config_rebuilds_the_model():
    model = perturbed(DiT.from_preset("dit-tiny", num_classes=2, null_class=True))
    clone = DiT(**model.config)
    clone.load_state_dict(model.state_dict())
    x = rng.standard_normal((2, 1, 28, 28))
    np.testing.assert_array_equal(model(x, [1, 2], [0, 2]).data, clone(x, [1, 2], [0, 2]).data)


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"DiT: patch size 3 does not divide the 28×28 input; use one of 1, 2, 4, 7, 14, 28"):
        DiT.from_preset("dit-tiny", patch_size=3)
    model = DiT.from_preset("dit-tiny")
    with pytest.raises(ValueError, match=r"DiT: input of shape \(1, 1, 32, 32\), but the model takes \(N, 1, 28, 28\)"):
        model(np.zeros((1, 1, 32, 32)), [0])
    with pytest.raises(ValueError, match="class labels y given to an unconditional model"):
        model(np.zeros((1, 1, 28, 28)), [0], [1])
    with pytest.raises(ValueError, match=r"DiT: class labels y must lie in \[0, 3\), got 0…3"):
        DiT.from_preset("dit-tiny", num_classes=2, null_class=True)(np.zeros((2, 1, 28, 28)), [0, 1], [0, 3])


def test_bench_times_a_dit_preset(capsys):
    from minidiff.__main__ import main

    assert main(["bench", "--preset", "dit-tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--mode", "train"]) == 0
    assert '"preset": "dit-tiny"' in capsys.readouterr().out
