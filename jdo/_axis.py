"""The worker axis: the one name every per-worker function communicates over."""

WORKERS = "workers"
