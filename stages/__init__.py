"""One thin script per DVC stage, run as modules (`python -m stages.train ...`) so that each
checkout, a queued experiment's temporary copy included, imports its own `fsds`."""
