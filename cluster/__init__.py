"""Head-side machinery: start or reach a Ray cluster, place workers, collect their results."""

import os

# Ray reads its auth mode once, when it is first imported; every cluster ftlaunch starts or joins
# uses token authentication unless the user explicitly chose otherwise in the environment.
os.environ.setdefault("RAY_AUTH_MODE", "token")
