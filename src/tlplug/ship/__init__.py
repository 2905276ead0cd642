"""Using a finished run: predict, evaluate, export, test-time augmentation."""
