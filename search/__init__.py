"""The search over the CycleGAN's knobs: a YAML space (`space.py`), run by Ray Tune with Optuna choosing trials.

`python -m search.run SPACE.yaml` runs one search; `search.space.load_space(path)` reads and checks a space file.
"""
