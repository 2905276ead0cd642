"""Searching recipes above the engine: tlplug search, --schedule auto, the LR range test."""
