"""Credentials: the Ray auth token every process of a cluster presents, and the secrets that
travel to workers sealed with it. Used by the launcher, the head and the workers alike."""
