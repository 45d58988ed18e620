"""The one-channel convolutions of the fast path at batch 32: their layouts in the trainer, and their cost by layout.

    PYTHONPATH=. python docs/benchmarks/h200-2026-12-04e/onech.py      # on a GPU, from the repository root
"""

import time
from types import SimpleNamespace

import torch
from torch import nn

from benchmarks.bench import epoch_order, sync, train_slices, trial_config
from cyclegan.train import Trainer

DEV = torch.device("cuda")


def trainer_strides() -> None:
    """The strides of the tensors that enter each network, and of what each returns, in two eager steps."""
    cfg = trial_config(SimpleNamespace(size=256, depth=8), 32, cuda_graphs=False)
    t = Trainer.build(cfg, DEV)
    seen: dict[tuple, int] = {}

    def note(name: str, where: str, x: torch.Tensor) -> None:
        key = (name, where, tuple(x.stride()))
        seen[key] = seen.get(key, 0) + 1

    for name, net in t.models.named().items():
        net.register_forward_pre_hook(lambda m, args, name=name: note(name, "in", args[0]))
        net.register_forward_hook(lambda m, args, out, name=name: note(name, "out", out))
    t1, t2 = (s.to(DEV).contiguous(memory_format=torch.channels_last) for s in train_slices(256))
    runner = t.runner(t.feed(t1, t2, 2, bits=None), 2)
    o1, o2 = (epoch_order(len(s), 2, 32, k, 0) for k, s in enumerate((t1, t2)))
    runner.run_epoch(o1, o2)
    sync(DEV)
    for key, count in sorted(seen.items()):
        print("trainer", key, count)


def ms_per_call(fn, n: int = 20) -> float:
    for _ in range(3):
        fn()
    sync(DEV)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(DEV)
    return 1000 * (time.perf_counter() - start) / n


def marked(x: torch.Tensor) -> torch.Tensor:
    """A one-channel NCHW tensor as a view with channels_last strides (free: the bytes are the same)."""
    n, c, h, w = x.shape
    return x.contiguous().view(n, h, w, c).permute(0, 3, 1, 2)


def fwd_bwd(mod: nn.Module, x0: torch.Tensor, grad_in: bool, mark_out: bool = False) -> torch.Tensor:
    x = x0.detach().requires_grad_(grad_in)
    with torch.autocast("cuda", torch.bfloat16):
        y = mod(x)
    if mark_out and not y.is_contiguous(memory_format=torch.channels_last):
        y = marked(y)  # a one-channel output, before the next network reads it
    y.float().square().mean().backward()
    return y


def isolated() -> None:
    cases = (("G/D first conv, no input grad", nn.Conv2d(1, 64, 4, 2, 1), (32, 1, 256, 256), False),
             ("D first conv on a fake, input grad", nn.Conv2d(1, 64, 4, 2, 1), (32, 1, 256, 256), True),
             ("G last transposed conv", nn.ConvTranspose2d(128, 1, 4, 2, 1), (32, 128, 128, 128), True))
    for label, mod, shape, grad_in in cases:
        mod = mod.to(DEV).to(memory_format=torch.channels_last)
        base = torch.randn(shape, device=DEV)
        inputs = ({"nchw": base.contiguous(), "marked": marked(base)} if shape[1] == 1
                  else {"nhwc": base.contiguous(memory_format=torch.channels_last)})
        for how, x0 in inputs.items():
            y = fwd_bwd(mod, x0, grad_in)
            ms = ms_per_call(lambda mod=mod, x0=x0, grad_in=grad_in: fwd_bwd(mod, x0, grad_in))
            print(f"{label} | input {how} {tuple(x0.stride())} | output {tuple(y.stride())} | {ms:.3f} ms fwd+bwd")
        if shape[1] != 1:
            ms = ms_per_call(lambda mod=mod, x0=x0: fwd_bwd(mod, x0, True, mark_out=True))
            print(f"{label} | output marked after | {ms:.3f} ms fwd+bwd")


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    trainer_strides()
    torch.cuda.empty_cache()
    isolated()
