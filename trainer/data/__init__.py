"""Reading prepared splits inside a worker: the pure order and rank assignment (order.py), the
streaming reader (split.py) and causal-LM batches (causal.py)."""
