"""Image features: the extractor that encodes both streams (original and corrected) with a cache,
the features file (``.npz``) that stores a few-shot cell, and the training-free corrected streams."""
