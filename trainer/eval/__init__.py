"""Evaluation across ranks: classification metrics (classification.py) and causal-LM loss,
perplexity and generation samples (causal.py)."""
