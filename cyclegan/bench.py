"""`python -m cyclegan.bench ...` runs the benchmark, a tool that lives beside the package: benchmarks/bench.py."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("benchmarks.bench", run_name="__main__", alter_sys=True)
