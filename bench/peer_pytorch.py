#!/usr/bin/python3
"""Peer measurement (not a test): one real-width FLUX.1 double block + one single block in eager
PyTorch (Debian's python3-torch, bf16 on the CPU, which runs its linears through oneDNN), timed
on the same machine as bench/flux_bench for a side-by-side ratio.

On a GPU (`--device cuda`, the device machine's PyTorch): attention through
F.scaled_dot_product_attention, times taken after torch.cuda.synchronize(), and `--compile MODE`
for the same code under torch.compile (e.g. max-autotune-no-cudagraphs; compilation is excluded
from the times and printed apart).

Written by us from the architecture as ../shared/testdata/flux-tiny/README.md describes it (not
BFL's code); random weights. Usage: /usr/bin/python3 bench/peer_pytorch.py [--threads 2] [--sizes 256,512]
       python3 bench/peer_pytorch.py --device cuda --sizes 512,1024 --reps 10 [--compile max-autotune-no-cudagraphs]
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

H, HEADS, HD, MLP = 3072, 24, 128, 12288


def lin(o, i):
    return torch.nn.Linear(i, o)


class Double(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for s in ("img", "txt"):
            setattr(self, s + "_mod", lin(6 * H, H))
            setattr(self, s + "_qkv", lin(3 * H, H))
            setattr(self, s + "_proj", lin(H, H))
            setattr(self, s + "_mlp0", lin(MLP, H))
            setattr(self, s + "_mlp2", lin(H, MLP))
            setattr(self, s + "_qs", torch.nn.Parameter(torch.ones(HD)))
            setattr(self, s + "_ks", torch.nn.Parameter(torch.ones(HD)))


class Single(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mod, self.l1, self.l2 = lin(3 * H, H), lin(3 * H + MLP, H), lin(H, H + MLP)
        self.qs, self.ks = torch.nn.Parameter(torch.ones(HD)), torch.nn.Parameter(torch.ones(HD))


def rms(x, s):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * s


def rope(x, cos, sin):
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), -1).flatten(-2)


SDPA = False   # set for GPUs: the fused attention PyTorch users get there


def attend(q, k, v, cos, sin):
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    if SDPA:
        a = F.scaled_dot_product_attention(q, k, v)
    else:
        a = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(HD), -1) @ v
    return a.transpose(1, 2).flatten(2)


def heads(qkv):
    B, L, _ = qkv.shape
    return qkv.view(B, L, 3, HEADS, HD).permute(2, 0, 3, 1, 4)


def ln(x):
    return F.layer_norm(x, (H,), eps=1e-6)


def forward(d, s, img, txt, vec, cos, sin):
    sv = F.silu(vec)[:, None]
    im, tm = d.img_mod(sv).chunk(6, -1), d.txt_mod(sv).chunk(6, -1)
    iq, ik, iv = heads(d.img_qkv((1 + im[1]) * ln(img) + im[0]))
    tq, tk, tv = heads(d.txt_qkv((1 + tm[1]) * ln(txt) + tm[0]))
    q = torch.cat((rms(tq, d.txt_qs), rms(iq, d.img_qs)), 2)
    k = torch.cat((rms(tk, d.txt_ks), rms(ik, d.img_ks)), 2)
    a = attend(q, k, torch.cat((tv, iv), 2), cos, sin)
    Lt = txt.shape[1]
    img = img + im[2] * d.img_proj(a[:, Lt:])
    img = img + im[5] * d.img_mlp2(F.gelu(d.img_mlp0((1 + im[4]) * ln(img) + im[3]), approximate="tanh"))
    txt = txt + tm[2] * d.txt_proj(a[:, :Lt])
    txt = txt + tm[5] * d.txt_mlp2(F.gelu(d.txt_mlp0((1 + tm[4]) * ln(txt) + tm[3]), approximate="tanh"))
    x = torch.cat((txt, img), 1)
    m = s.mod(sv).chunk(3, -1)
    h = s.l1((1 + m[1]) * ln(x) + m[0])
    q, k, v = heads(h[..., : 3 * H])
    a = attend(rms(q, s.qs), rms(k, s.ks), v, cos, sin)
    return x + m[2] * s.l2(torch.cat((a, F.gelu(h[..., 3 * H :], approximate="tanh")), -1))


class Resnet(torch.nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.n1, self.c1 = torch.nn.GroupNorm(32, i, eps=1e-6), torch.nn.Conv2d(i, o, 3, padding=1)
        self.n2, self.c2 = torch.nn.GroupNorm(32, o, eps=1e-6), torch.nn.Conv2d(o, o, 3, padding=1)
        self.skip = torch.nn.Conv2d(i, o, 1) if i != o else torch.nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class Decoder(torch.nn.Module):
    """The FLUX.1 autoencoder's decoder shape: ch 128, multipliers 1,2,4,4, 3 ResNet blocks a level."""

    def __init__(self):
        super().__init__()
        top = 512
        self.conv_in = torch.nn.Conv2d(16, top, 3, padding=1)
        self.mid1, self.mid2 = Resnet(top, top), Resnet(top, top)
        self.norm = torch.nn.GroupNorm(32, top, eps=1e-6)
        self.q, self.k, self.v, self.o = (torch.nn.Conv2d(top, top, 1) for _ in range(4))
        blocks, ups, c = [], [], top
        for mult in (4, 4, 2, 1):
            out = 128 * mult
            blocks.append(torch.nn.ModuleList(Resnet(c if j == 0 else out, out) for j in range(3)))
            ups.append(torch.nn.Conv2d(out, out, 3, padding=1) if mult != 1 or len(ups) < 3 else None)
            c = out
        self.blocks = torch.nn.ModuleList(blocks)
        self.ups = torch.nn.ModuleList(u if u is not None else torch.nn.Identity() for u in ups)
        self.norm_out, self.conv_out = torch.nn.GroupNorm(32, 128, eps=1e-6), torch.nn.Conv2d(128, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid1(self.conv_in(z))
        n = self.norm(h)
        B, C, Hh, W = n.shape
        q, k, v = (t(n).flatten(2).transpose(1, 2) for t in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), -1) @ v
        h = self.mid2(h + self.o(a.transpose(1, 2).reshape(B, C, Hh, W)))
        for i, (bl, up) in enumerate(zip(self.blocks, self.ups)):
            for r in bl:
                h = r(h)
            if i < 3:
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--reps", type=int, default=3)
    # f32: for PyTorch held to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), whose oneDNN
    # has no bf16 matmul there ("could not create a primitive descriptor iterator").
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--no-decode", action="store_true", help="blocks only")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", default="", help="torch.compile mode for the blocks (GPU), e.g. max-autotune-no-cudagraphs")
    a = p.parse_args()
    global SDPA
    SDPA = a.device.startswith("cuda")
    dev = torch.device(a.device)
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, s = Double().to(dev, dt), Single().to(dev, dt)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{a.threads} threads, mkldnn {torch.backends.mkldnn.is_available()}"
    print(f"torch {torch.__version__}, {name}, {a.dtype}, attention {'sdpa' if SDPA else 'softmax(q k^T) v'}, "
          f"{'torch.compile ' + a.compile if a.compile else 'eager'}")
    step = torch.compile(forward, mode=a.compile) if a.compile else forward

    def best_of(fn):
        t0 = time.perf_counter()
        fn()   # warm-up (and compilation)
        sync()
        first = time.perf_counter() - t0
        best = 1e9
        for _ in range(a.reps):
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best, first

    with torch.no_grad():
        for size in (int(x) for x in a.sizes.split(",")):
            Li, Lt = (size // 16) ** 2, 256
            img = torch.randn(1, Li, H, dtype=dt, device=dev)
            txt = torch.randn(1, Lt, H, dtype=dt, device=dev)
            vec = torch.randn(1, H, dtype=dt, device=dev)
            ang = torch.rand(1, 1, Li + Lt, HD // 2, device=dev)
            cos, sin = ang.cos().to(dt), ang.sin().to(dt)
            best, first = best_of(lambda: step(d, s, img, txt, vec, cos, sin))
            print(f"{size}x{size}: one double + one single block {best:.4f} s (best of {a.reps}; first run {first:.1f} s)")
        if a.no_decode:
            return
        dec = Decoder().to(dev, dt)
        for size in (int(x) for x in a.sizes.split(",")):
            z = torch.randn(1, 16, size // 8, size // 8, dtype=dt, device=dev)
            best, _ = best_of(lambda: dec(z))
            print(f"{size}x{size}: autoencoder decode of a {size // 8}x{size // 8} latent {best:.4f} s (best of {a.reps})")


if __name__ == "__main__":
    main()
