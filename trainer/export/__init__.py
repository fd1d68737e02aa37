"""The trained model as a plain Hugging Face directory: at the end of a run (save.py), and from a
committed checkpoint (consolidate.py, readers.py, peft.py)."""
