"""One trial process's start, phase by phase: python -c, run 8 at once."""
import time

t0 = time.perf_counter()
import torch  # noqa: E402

t1 = time.perf_counter()
import search.trainable  # noqa: E402,F401

t2 = time.perf_counter()
p = torch.nn.Parameter(torch.zeros(3))
torch.optim.Adam([p])  # imports torch._dynamo (torch._compile._disable_dynamo)
t3 = time.perf_counter()
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
t4 = time.perf_counter()
print(f"torch {t1-t0:.2f} trainable {t2-t1:.2f} adam/dynamo {t3-t2:.2f} cuda {t4-t3:.2f} total {t4-t0:.2f}")
