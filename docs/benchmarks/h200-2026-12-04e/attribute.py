"""Which aten op launched each kernel of a torch.profiler chrome trace (prof_shapes.py's), summed per step.

    python attribute.py trace_b32_bench1.json.gz 3     # 3 steps in the trace
"""
import collections
import gzip
import json
import sys

trace = json.load(gzip.open(sys.argv[1]))["traceEvents"]
steps = int(sys.argv[2])
launches = {e["args"].get("correlation"): e for e in trace if e.get("cat") == "cuda_runtime" and "args" in e}
ops = sorted((e for e in trace if e.get("cat") == "cpu_op"), key=lambda o: o["ts"])


def chain(launch):
    """The ops that enclose a kernel launch on its thread, outermost first."""
    around = [o for o in ops if o["tid"] == launch["tid"] and o["ts"] <= launch["ts"]
              and o["ts"] + o["dur"] >= launch["ts"] + launch["dur"]]
    return [o["name"] + (str(o["args"].get("Input Dims", "")) if o is around[-1] else "")
            for o in sorted(around, key=lambda o: -o["dur"])] if around else ["?"]


total = collections.Counter()
for k in (e for e in trace if e.get("cat") == "kernel"):
    launch = launches.get(k["args"].get("correlation"))
    where = " > ".join(chain(launch)[-3:]) if launch else "?"
    total[(k["name"][:60], where[:200])] += k["dur"]
for (kernel, where), us in total.most_common(40):
    print(f"{us / steps / 1000:6.2f} ms/step  {kernel}  <-  {where}")
