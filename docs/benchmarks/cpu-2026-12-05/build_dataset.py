"""A trial's own data set, old code against new: `python build_dataset.py DATA RESIZE` in a checkout.

Reads DATA as a search's driver does (`read_data`), then builds the trial's data set at RESIZE as each trial does
(`build_dataset`), three times, and prints one JSON line: the best time, the training slices, and the process's peak
resident memory before and after the builds (a fresh process per resize, so that the peaks are the build's).
"""

import json
import resource
import sys
import time

import torch

from cyclegan.data import build_dataset, read_data


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


data, resize = sys.argv[1], int(sys.argv[2])
slices = read_data(data)
before = peak_gib()
times = []
for _ in range(3):
    start = time.perf_counter()
    d = build_dataset(slices, resize)
    times.append(time.perf_counter() - start)
    del d
n = sum(len(v) for v in slices.train.values())
print(json.dumps({"resize": resize, "threads": torch.get_num_threads(), "training_slices": n,
                  "best_seconds": round(min(times), 3), "ms_a_slice": round(min(times) / n * 1e3, 3),
                  "peak_gib_after_read": round(before, 2), "peak_gib_after_build": round(peak_gib(), 2)}))
