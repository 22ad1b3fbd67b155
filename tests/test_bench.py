"""The bench command and the FLOP counter it reports GFLOP/s with."""
import json

import numpy as np
import pytest

import minidiff.functional as F
from minidiff import Tensor, no_grad
from minidiff.__main__ import main
from minidiff.flops import count_flops
from minidiff.unet import UNet


def test_conv_linear_and_attention_report_their_matrix_product_flops():
    x = Tensor(np.zeros((2, 3, 8, 8), np.float32))
    with count_flops() as counter:
        F.conv2d(x, Tensor(np.zeros((5, 3, 3, 3), np.float32)), stride=2, padding=1)  # out (2, 5, 4, 4)
    assert counter.total == 2 * (2 * 5 * 4 * 4) * (3 * 3 * 3)
    with count_flops() as counter:
        F.linear(Tensor(np.zeros((7, 4), np.float32)), Tensor(np.zeros((6, 4), np.float32)))
        q = Tensor(np.zeros((2, 10, 4), np.float32))
        F.scaled_dot_product_attention(q, q, q)
    assert counter.total == 2 * 7 * 6 * 4 + 2 * (2 * 10 * 10) * (4 + 4)
    with count_flops() as outer:
        F.mse_loss(x, x)  # memory-bound ops count nothing
    assert outer.total == 0


def test_the_mnist_unet_costs_about_055_gflop_per_image():
    """DESIGN.md: 'One forward pass costs about 0.55 GFLOP per 28×28 image'."""
    model = UNet.from_preset("mnist")
    with no_grad(), count_flops() as counter:
        model(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1, int))
    assert 0.54e9 < counter.total < 0.56e9


def test_bench_prints_one_json_line_per_kernel_family(capsys):
    status = main(["bench", "--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0",
                   "--kernels", "cpu,reference"])
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["kernels"] for line in lines] == ["cpu", "reference"]
    for line in lines:
        assert line["params"] == 176849 and line["batch"] == 2
        assert line["train_step_s"] > 0 and line["forward_images_per_s"] > 0 and line["train_gflops"] > 0
        assert line["train_peak_memory_mib"] > 0


def test_bench_times_sampling_and_names_the_blas(capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # read back from the environment, not forced here
    assert main(["bench", "--preset", "tiny", "--batch", "3", "--steps", "1", "--warmup", "0", "--mode", "sample"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["sample_steps"] == 50 and line["sample_batch"] == 3
    assert line["sample_step_s"] > 0 and line["sample_images_per_s"] > 0 and "train_step_s" not in line
    assert line["blas"]["OPENBLAS_CORETYPE"] == "Haswell" and {"internal_api", "architecture"} <= set(line["blas"])
    assert line["sampler"] == "ddim" and line["sample_evaluations"] == 50
    assert line["cpu"]["model"] and isinstance(line["cpu"]["vector_extensions"], list)  # which machine made the figure


def test_bench_samplers_are_a_table_of_evaluations_per_step():
    """Adding a sampler to bench is one line of SAMPLERS; each must be one `generate` draws with."""
    import inspect

    from minidiff.bench import SAMPLERS
    from minidiff.sample import generate

    assert SAMPLERS["ddim"] == 1 and all(isinstance(k, int) and k >= 1 for k in SAMPLERS.values())
    doc = inspect.getdoc(generate)
    assert all(f'"{name}"' in doc for name in SAMPLERS)


def test_bench_counts_heuns_evaluations_as_the_sampler_makes_them(capsys, monkeypatch):
    """Heun corrects every step but the last: 2·50 − 1 model calls, counted on the model itself."""
    from minidiff import bench

    calls = []
    original = bench.Benchmark.__init__

    def counting_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        forward = self.model.forward
        self.model.forward = lambda *a, **k: (calls.append(a[0].shape[0]), forward(*a, **k))[1]

    monkeypatch.setattr(bench.Benchmark, "__init__", counting_init)
    assert main(["bench", "--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--mode", "sample",
                 "--sampler", "heun"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["sampler"] == "heun" and line["sample_evaluations"] == 99 == len(calls)


def test_bench_profile_names_the_ops(capsys):
    assert main(["bench", "--preset", "tiny", "--batch", "2", "--steps", "1", "--mode", "train", "--profile"]) == 0
    wall, profile = (json.loads(line) for line in capsys.readouterr().out.splitlines()[-2:])
    assert wall["profile_step_s"] > 0 and "WinogradConv2d.backward" in wall["wall_by_op_s"]
    assert profile["profile_chunk_threads"] == 1
    assert "WinogradConv2d.backward" in profile["by_op_s"] and "cpu.winograd_input_transform" in profile["by_op_s"]


@pytest.mark.parametrize("argv, message", [
    (["--kernels", "gpu"], "--kernels 'gpu'"),
    (["--batch", "0"], "--batch must be at least 1"),
])
def test_bench_refuses_bad_flags_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minidiff bench: error:") and message in err and "\n" not in err
