"""Data preparation in the user's shell: reading raw sources (sources.py), tokenizing into
shards (tokenize.py, causal.py), checking prepared splits (prepared.py), the demo data (demo.py)."""
