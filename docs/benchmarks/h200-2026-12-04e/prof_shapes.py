"""One eager bf16 step, profiled with shapes: which aten op launches each kernel.

    PYTHONPATH=. python prof_shapes.py OUT [timed: 1 or 0] [size] [batch]     # defaults: 1, 256, 32
"""
import math
import sys
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench import epoch_order, sync, train_slices, trial_config
from cyclegan.train import Trainer

out = sys.argv[1]
bench = int(sys.argv[2]) if len(sys.argv) > 2 else 1
size = int(sys.argv[3]) if len(sys.argv) > 3 else 256
args = SimpleNamespace(size=size, depth=8 if size == 256 else 5)
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
B = int(sys.argv[4]) if len(sys.argv) > 4 else 32
cfg = trial_config(args, B, cuda_graphs=False, cudnn_benchmark=bool(bench))
t = Trainer.build(cfg, dev)
slices = train_slices(size)
t1, t2 = (s.to(dev).contiguous(memory_format=torch.channels_last) for s in slices)
steps = 3
runner = t.runner(t.feed(t1, t2, steps, bits=None), steps)
o1, o2 = (epoch_order(len(s), steps, B, k, 0) for k, s in enumerate((t1, t2)))
for _ in range(max(1, math.ceil((cfg.pool_size / B + 4) / steps))):
    runner.run_epoch(o1, o2)
sync(dev)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
    runner.run_epoch(o1, o2)
    sync(dev)
prof.export_chrome_trace(f"{out}/trace_b{B}_bench{bench}.json")
with open(f"{out}/ops_b{B}_bench{bench}.txt", "w") as f:
    f.write(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=60,
                                                               max_name_column_width=50, max_shapes_column_width=120))
print("done", bench)
