"""Building the task model from a Hugging Face directory (build.py), optionally wrapped by a
PEFT method (peft.py)."""
