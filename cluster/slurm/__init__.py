"""Ray inside a SLURM allocation: the sbatch script (script.py, pure), per-job ports and
directories (layout.py, pure), the node side the script calls (node.py), and jobs by id (jobs.py)."""
