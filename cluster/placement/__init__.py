"""Where workers go: the pure fit check (fit.py), the pure mapping to Ray's ScalingConfig
(plan.py), and the bounded reservation on a live cluster (reserve.py)."""
