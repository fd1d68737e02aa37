"""Ray: run a job on an embedded or existing cluster (backend.py), and the Jobs API for
submitting to a remote one (jobs.py)."""
