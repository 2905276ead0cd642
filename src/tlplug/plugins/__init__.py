"""The plugin system: hook specs, the host, registries, kinds and strategy options."""
