"""Seconds of the search driver's main thread by what `main` (and `summarise`) was doing, from py-spy's raw
output (`py-spy record -r 50 --idle --threads -f raw -p PID`): python driver_profile.py RAW [RATE]."""
import collections
import sys


def main(raw: str, rate: float = 50.0) -> None:
    top, tail = collections.Counter(), collections.Counter()
    for line in open(raw):
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        if "MainThread" not in frames[0]:
            continue
        names = [f.split(" (")[0] for f in frames]
        if "main" in names:
            i = names.index("main")
            top[" > ".join(names[i + 1:i + 3])] += int(n)
        if "summarise" in names:
            i = names.index("summarise")
            tail[" > ".join(names[i + 1:i + 3])] += int(n)
    for title, counts in (("main thread, under main", top), ("main thread, under summarise", tail)):
        print(f"{title} (seconds):")
        for key, n in counts.most_common(14):
            print(f"  {n / rate:7.2f}  {key}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 50.0)
