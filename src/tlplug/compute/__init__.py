"""Where and in what numbers a run computes: device, precision, memory, seeds."""
