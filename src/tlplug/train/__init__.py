"""Training a run: the loop, its epochs and steps, feeds and caches, the probe, freezing,
the optimizer, and what happens at the unfreeze."""
