"""(Run from the repository root with PYTHONPATH=.) The one-channel convolutions of the fast path at batch 32: which layout cuDNN runs them in, and what it costs."""
import math, sys, time
from types import SimpleNamespace
import torch
from torch import nn
from benchmarks.bench import train_slices, trial_config, epoch_order, sync
from cyclegan.train import Trainer

dev = torch.device("cuda")
torch.backends.cudnn.benchmark = True
# 1. The strides the trainer's one-channel tensors have where they enter each network, and the generators' outputs.
cfg = trial_config(SimpleNamespace(size=256, depth=8), 32, cuda_graphs=False)
t = Trainer.build(cfg, dev)
seen = {}
def pre(name):
    def hook(m, args):
        seen.setdefault((name, "in", tuple(args[0].stride())), 0)
        seen[(name, "in", tuple(args[0].stride()))] += 1
    return hook
def post(name):
    def hook(m, args, out):
        seen.setdefault((name, "out", tuple(out.stride())), 0)
        seen[(name, "out", tuple(out.stride()))] += 1
    return hook
for name, net in t.models.named().items():
    net.register_forward_pre_hook(pre(name)); net.register_forward_hook(post(name))
t1, t2 = (s.to(dev).contiguous(memory_format=torch.channels_last) for s in train_slices(256))
runner = t.runner(t.feed(t1, t2, 2, bits=None), 2)
o1, o2 = (epoch_order(len(s), 2, 32, k, 0) for k, s in enumerate((t1, t2)))
runner.run_epoch(o1, o2); sync(dev)
for k, v in sorted(seen.items()): print("trainer", k, v)
del runner, t
torch.cuda.empty_cache()

# 2. Isolated: forward and backward of the first conv of G/D and of G's last transposed conv, by input strides.
def timeit(fn, n=20):
    for _ in range(3): fn()
    sync(dev); t0 = time.perf_counter()
    for _ in range(n): fn()
    sync(dev); return 1000 * (time.perf_counter() - t0) / n

def nchw(x): return x.contiguous()
def marked(x): n, c, h, w = x.shape; return x.contiguous().view(n, h, w, c).permute(0, 3, 1, 2)  # c == 1: a view

for label, mod, shape, grad_in in (("G/D first conv, no input grad", nn.Conv2d(1, 64, 4, 2, 1), (32, 1, 256, 256), False),
                                   ("D first conv on a fake, input grad", nn.Conv2d(1, 64, 4, 2, 1), (32, 1, 256, 256), True),
                                   ("G last transposed conv", nn.ConvTranspose2d(128, 1, 4, 2, 1), (32, 128, 128, 128), True)):
    mod = mod.to(dev).to(memory_format=torch.channels_last)
    base = torch.randn(shape, device=dev)
    for how in ("nchw", "marked") if shape[1] == 1 else ("nhwc",):
        x0 = (nchw(base) if how == "nchw" else marked(base)) if shape[1] == 1 else base.contiguous(memory_format=torch.channels_last)
        def step():
            x = x0.detach().requires_grad_(grad_in)
            with torch.autocast("cuda", torch.bfloat16):
                y = mod(x)
            y.float().square().mean().backward()
            return y
        y = step()
        ms = timeit(step)
        print(f"{label} | input {how} {tuple(x0.stride())} | output {tuple(y.stride())} | {ms:.3f} ms fwd+bwd")
    if shape[1] != 1:  # the output is one channel: mark it before the next network reads it
        def step2():
            x = x0.detach().requires_grad_(True)
            with torch.autocast("cuda", torch.bfloat16):
                y = mod(x)
            n, c, h, w = y.shape
            y = y.contiguous().view(n, h, w, c).permute(0, 3, 1, 2) if not y.is_contiguous(memory_format=torch.channels_last) else y
            y.float().square().mean().backward()
        print(f"{label} | output marked after | {timeit(step2):.3f} ms fwd+bwd")
