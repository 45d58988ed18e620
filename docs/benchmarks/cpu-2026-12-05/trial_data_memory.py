"""A trial's training data, built and handed to its feed, in a checkout: `python trial_data_memory.py SLICES RESIZE`.

SLICES is a pickle of what `read_data` returned (a search's driver hands the same to each trial through Ray's
object store, where the trial reads it without a copy; here it is loaded first, and only what comes after counts).
Builds the data set as the checkout's trial does (`search.trainable.trial_dataset`) and the training feed as its
`fit` does on a CPU (`Resident`, compact codes), once, and prints one JSON line: the seconds, and the process's peak
resident memory above what it held once the slices were loaded.
"""

import json
import pickle
import resource
import sys
import time

from cyclegan.config import TrainConfig
from cyclegan.feed import Resident
from search.trainable import trial_dataset


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


with open(sys.argv[1], "rb") as f:
    slices = pickle.load(f)
resize = int(sys.argv[2])
cfg = TrainConfig(resize=resize, unet_depth=5, batch_size=32)
loaded = peak_gib()
start = time.perf_counter()
d = trial_dataset(slices, cfg)
built = time.perf_counter() - start
feed = Resident(d.train.t1, d.train.t2, d.train.t1.device, cfg.batch_size, 1, bits=d.bits)
fed = time.perf_counter() - start
n = len(d.train.t1) + len(d.train.t2)
held = {x.data_ptr(): x for x in (d.train.t1, d.train.t2, feed.t1, feed.t2)}  # the feed may keep the set's own
print(json.dumps({"resize": resize, "training_slices": n, "train_dtype": str(d.train.t1.dtype),
                  "feed_dtype": str(feed.t1.dtype), "build_seconds": round(built, 2), "to_feed_seconds": round(fed, 2),
                  "peak_gib_above_loaded": round(peak_gib() - loaded, 2),
                  "held_gib": round(sum(x.numel() * x.element_size() for x in held.values()) / 2**30, 2)}))
