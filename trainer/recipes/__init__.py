"""What differs by task: classification.py and causal_lm.py, each run by trainer/loop/run.py."""
