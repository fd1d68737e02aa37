"""The training run shared by every recipe: run.py (setup -> train -> test -> save), train.py
(the cadence), progress.py, checkpoints.py, window.py (per-rank metrics), context.py."""
