#!/usr/bin/env python
"""PyTorch yardstick for the minidiff reference MNIST U-Net.

Builds exactly the architecture described in DESIGN.md ("The reference MNIST
U-Net") in PyTorch, checks the parameter count (1,623,169), and times a full
training step (forward + MSE + backward + Adam) and a no-grad forward pass, or
sampling --batch digits by DDIM-50 (--mode sample). Prints one JSON line.

This script is standalone: minidiff never imports torch, and this file is not
imported by minidiff.  It only runs when torch happens to be installed.

    python benchmarks/torch_unet.py --threads 2 --batch 64 --steps 10
    python benchmarks/torch_unet.py --mode forward --device cuda
"""

import argparse
import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("benchmarks/torch_unet.py: PyTorch is not installed; "
             "this yardstick needs torch (pip install torch) and is optional.")

EXPECTED_PARAMS = 1_623_169


def timestep_embedding(t, dim):
    """Sinusoidal embedding: half sin, half cos, freqs exp(-ln(1e4) * i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb_dim, num_groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(num_groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, c, num_groups):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, hh * ww).unbind(1)
        w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=-1)
        h = torch.einsum("nqk,nck->ncq", w, v).reshape(n, c, hh, ww)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2),
                 num_res_blocks=2, attn_resolutions=(7,), num_groups=8,
                 dropout=0.0, image_size=28):
        super().__init__()
        self.base = base_channels
        temb_dim = 4 * base_channels
        self.temb1 = nn.Linear(base_channels, temb_dim)
        self.temb2 = nn.Linear(temb_dim, temb_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Down path: a flat list of ("res"|"attn"|"down", module) in execution order.
        self.down = nn.ModuleList()
        self.down_kinds = []
        ch = base_channels
        res = image_size
        skip_chs = [ch]
        for level, m in enumerate(channel_mults):
            cout = base_channels * m
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, cout, temb_dim, num_groups, dropout))
                self.down_kinds.append("res")
                ch = cout
                if res in attn_resolutions:
                    self.down.append(Attention(ch, num_groups))
                    self.down_kinds.append("attn")
                skip_chs.append(ch)
            if level != len(channel_mults) - 1:
                self.down.append(Downsample(ch))
                self.down_kinds.append("down")
                res = (res + 1) // 2  # 3x3, stride 2, pad 1: 28 -> 14 -> 7
                skip_chs.append(ch)

        self.mid1 = ResBlock(ch, ch, temb_dim, num_groups, dropout)
        self.mid_attn = Attention(ch, num_groups)
        self.mid2 = ResBlock(ch, ch, temb_dim, num_groups, dropout)

        # Up path.
        self.up = nn.ModuleList()
        self.up_kinds = []
        for level in reversed(range(len(channel_mults))):
            cout = base_channels * channel_mults[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_chs.pop(), cout, temb_dim,
                                        num_groups, dropout))
                self.up_kinds.append("res")
                ch = cout
                if res in attn_resolutions:
                    self.up.append(Attention(ch, num_groups))
                    self.up_kinds.append("attn")
            if level != 0:
                self.up.append(Upsample(ch))
                self.up_kinds.append("up")
                res *= 2
        assert not skip_chs

        self.norm_out = nn.GroupNorm(num_groups, ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb2(F.silu(self.temb1(timestep_embedding(t, self.base))))
        h = self.conv_in(x)
        hs = [h]
        for kind, mod in zip(self.down_kinds, self.down):
            if kind == "res":
                h = mod(h, temb)
                hs.append(h)
            elif kind == "attn":
                h = mod(h)
                hs[-1] = h  # the skip is the attention output
            else:
                h = mod(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for kind, mod in zip(self.up_kinds, self.up):
            if kind == "res":
                h = mod(torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = mod(h)
        assert not hs
        return self.conv_out(F.silu(self.norm_out(h)))


def ddim_sample(model, n, batch, device, steps=50, T=1000):
    """DDIM (η = 0) on the linear β schedule, as minidiff's ddim_sample with clip_denoised: `steps`
    timesteps round((T − 1)·i/(steps − 1)), x̂₀ clipped to [−1, 1] and ε̂ recomputed from it."""
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)
    timesteps = torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64)).long()
    samples = []
    with torch.no_grad():
        for start in range(0, n, batch):
            x = torch.randn(min(batch, n - start), 1, 28, 28, device=device)
            for i in reversed(range(steps)):
                t = timesteps[i]
                a, a_prev = alphas_cumprod[t].item(), alphas_cumprod[timesteps[i - 1]].item() if i else 1.0
                eps = model(x, torch.full((x.shape[0],), int(t), device=device))
                x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
                eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
                x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
            samples.append(x)
    return torch.cat(samples)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, warmup, steps, device):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--mode", choices=("train", "forward", "both", "sample"), default="both",
                   help="sample: --batch digits by DDIM-50, --sample-batch at a time (minidiff bench --mode sample's loop)")
    p.add_argument("--sample-batch", type=int, default=500, help="images per model call when sampling")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name, value in (("--batch", args.batch), ("--steps", args.steps), ("--sample-batch", args.sample_batch)):
        if value < 1:
            p.error(f"{name} must be at least 1, got {value}")

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("benchmarks/torch_unet.py: --device cuda requested but CUDA is not available.")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = UNet().to(device=device, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params:,}", file=sys.stderr)
    assert params == EXPECTED_PARAMS, f"parameter count {params} != {EXPECTED_PARAMS}"

    n = args.batch
    x = torch.randn(n, 1, 28, 28, device=device)
    t = torch.randint(0, 1000, (n,), device=device)
    eps = torch.randn(n, 1, 28, 28, device=device)

    result = {
        "framework": "torch",
        "version": torch.__version__,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch": n,
    }

    if args.mode in ("train", "both"):
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(x, t), eps)
            loss.backward()
            opt.step()

        s = _time(train_step, args.warmup, args.steps, device)
        result["train_step_s"] = round(s, 6)
        result["train_images_per_s"] = round(n / s, 2)

    if args.mode == "sample":
        model.eval()
        s = _time(lambda: ddim_sample(model, n, args.sample_batch, device), 0, args.steps, device)
        result["sample_s"] = round(s, 6)
        result["sample_images_per_s"] = round(n / s, 2)

    if args.mode in ("forward", "both"):
        model.eval()

        def forward():
            with torch.no_grad():
                model(x, t)

        s = _time(forward, args.warmup, args.steps, device)
        result["forward_step_s"] = round(s, 6)
        result["forward_images_per_s"] = round(n / s, 2)

    result["params"] = params
    print(json.dumps(result))


if __name__ == "__main__":
    main()
