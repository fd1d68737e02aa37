"""`ftlaunch plan`: how much memory each rank of a job needs, before anything starts.

architecture.py  the model's weights (names and shapes) from config.json or the safetensors header
memory.py        per-rank memory for the configured engine, ZeRO stage, offload, PEFT (pure)
advice.py        the verdict against a target, suggestions, communication and throughput (pure)
target.py        what memory the ranks will have: flags, a reachable cluster, or this machine
report.py        the text table and the JSON object

Torch-free: the launcher runs it in the user's shell and before every `ftlaunch run`.
"""
