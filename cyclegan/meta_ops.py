"""Meta-device ops answered from a memo: what `cyclegan.memory`'s traces run, without running it again.

An op on the meta device computes only its output's shape, strides and dtype, but for most ops PyTorch does that in
Python (`torch._refs`, `torch._decomp`): a memory trace of one CycleGAN train step, about 1,200 ops, took 0.1-0.8 s,
and a search's driver runs one for every new architecture while Tune's loop waits (docs/benchmarks.md). Those outputs
depend on nothing but the op and its inputs' metadata, and the trials of a search repeat the same layers at the same
shapes. So, under `MetaOps()`:

- an op that returns new tensors and mutates nothing (`aten.convolution`, `aten.add.Tensor`, ...) is run once per
  input metadata; later calls get new meta tensors of the recorded shapes, strides and dtypes;
- an in-place op (`aten.leaky_relu_`, `aten.uniform_`, ...) that left its tensor's metadata as it was is not run
  again: on the meta device it has nothing else to do;
- views, ops on other devices, and anything whose arguments cannot be keyed run as usual.

Autograd sits above this mode, so the graph, its saved tensors and the version counters are what they would be.
The memo is the process's, bounded (`MAX_ENTRIES`); tests/cyclegan/test_meta_ops.py checks the traces are equal.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

MAX_ENTRIES = 100_000  # a few hundred bytes each; a search's architectures make a few thousand
_SAME_TENSOR = "same tensor"
_memo: dict[Any, Any] = {}
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


class _Unkeyable(Exception):
    pass


def _key(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return (tuple(arg.shape), arg.stride(), arg.storage_offset(), arg.dtype, arg.device.type)
    if isinstance(arg, (list, tuple)):
        return (type(arg), tuple(_key(a) for a in arg))
    if isinstance(arg, _SCALARS):
        return (type(arg), arg)  # 1, 1.0 and True are equal as keys, not as arguments
    raise _Unkeyable


@functools.cache
def _kind(func: torch._ops.OpOverload) -> str | None:
    """"new" for an op that returns fresh tensors and mutates nothing, "in place" for one that writes its first
    argument only and returns it, else None (views, out= variants, several mutated arguments, non-tensor results)."""
    schema = func._schema
    aliased = [a.alias_info is not None for a in schema.arguments]
    returns = schema.returns
    if not any(aliased) and returns and all(r.alias_info is None and str(r.type) == "Tensor" for r in returns):
        return "new"
    first = schema.arguments[0].alias_info if schema.arguments else None
    if (first is not None and first.is_write and not any(aliased[1:]) and len(returns) == 1
            and returns[0].alias_info is not None):
        return "in place"
    return None


class MetaOps(TorchDispatchMode):
    """Answers repeated meta-device ops from the process's memo (see the module's doc)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func)
        if kind is None or (kind == "in place" and not args):
            return func(*args, **kwargs)
        flat, spec = tree_flatten((args, kwargs))
        devices = {a.device.type for a in flat if isinstance(a, torch.Tensor)}
        if devices != {"meta"}:  # no tensor, or one that holds values: nothing to answer from metadata
            return func(*args, **kwargs)
        try:
            inputs = tuple(_key(a) for a in flat)
        except _Unkeyable:
            return func(*args, **kwargs)
        key = (func, spec, inputs)
        known = _memo.get(key)
        if known is _SAME_TENSOR:
            return args[0]
        if known is not None:
            out_spec, metas = known
            return tree_unflatten([torch.empty_strided(shape, stride, dtype=dtype, device="meta")
                                   for shape, stride, dtype in metas], out_spec)
        out = func(*args, **kwargs)
        if len(_memo) >= MAX_ENTRIES:
            _memo.clear()
        if kind == "in place":
            if out is args[0] and _key(out) == inputs[0]:
                _memo[key] = _SAME_TENSOR
            return out
        outs, out_spec = tree_flatten(out)
        given = {id(a.untyped_storage()) for a in flat if isinstance(a, torch.Tensor)}
        if all(isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in given for t in outs):
            _memo[key] = (out_spec, [(tuple(t.shape), t.stride(), t.dtype) for t in outs])
        return out


def memo_size() -> int:
    """How many ops the memo holds."""
    return len(_memo)
