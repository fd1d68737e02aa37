"""`ftlaunch slurm` options (options.py) and SLURM job ids for status/logs/stop (jobs.py)."""
