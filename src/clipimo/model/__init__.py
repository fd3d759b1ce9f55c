"""The model: open_clip backbones, the two-stream IMO adapter inside the image tower, Hub loading,
the adapter card, and tiny random-init towers for tests and the demo."""
