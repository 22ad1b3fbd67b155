"""Per chunk of the mnist U-Net's convs, on one core: the backward's V recomputation and its filter-gradient
GEMM ∂U = ∂M·Vᵀ, from V's own layout ("NT") against V written transposed ("NN").

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/transposed_v.py
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits

from minidiff import backend
from minidiff.kernels import cpu

# (name, images in a chunk, C, C_out, side, m): the chunk sizes image_chunks gives these convs
CHUNKS = [("28×28, 32 → 32, F(4×4)", 4, 32, 32, 28, 4), ("28×28, 64 → 32, F(4×4)", 2, 64, 32, 28, 4),
          ("14×14, 64 → 64, F(2×2)", 4, 64, 64, 14, 2), ("14×14, 128 → 64, F(2×2)", 2, 128, 64, 14, 2),
          ("7×7, 128 → 128, F(2×2)", 8, 128, 128, 7, 2)]


def median_us(work, rounds: int = 300) -> float:
    work()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


def main() -> None:
    if backend.extension() is None:
        raise SystemExit("transposed_v.py: the compiled kernels (minidiff._C) are not built")
    backend.extension().set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"vectorised transpose on this CPU: {cpu.winograd_transposed_v_pays(np.float32)}")
    with threadpool_limits(1):
        for name, images, c, c_out, side, m in CHUNKS:
            x = rng.standard_normal((images, c, side, side)).astype(np.float32)
            v, v_t = cpu.winograd_input_transform(x, 1, m=m), cpu.winograd_input_transform(x, 1, m=m, transposed=True)
            grad_m = rng.standard_normal((v.shape[0], c_out, v.shape[2])).astype(np.float32)
            nt = (median_us(lambda: cpu.winograd_input_transform(x, 1, m=m, out=v)), median_us(lambda: np.matmul(grad_m, v.transpose(0, 2, 1))))
            nn = (median_us(lambda: cpu.winograd_input_transform(x, 1, m=m, out=v_t, transposed=True)), median_us(lambda: np.matmul(grad_m, v_t)))
            print(f"{name:25s} {v.shape[2]:4d} tiles: V {nt[0]:6.1f} + NT {nt[1]:6.1f} = {sum(nt):6.1f} µs;  "
                  f"Vᵀ {nn[0]:6.1f} + NN {nn[1]:6.1f} = {sum(nn):6.1f} µs  ({100 * (sum(nn) / sum(nt) - 1):+.0f} %)")


if __name__ == "__main__":
    main()
