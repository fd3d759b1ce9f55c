"""Experiments: one few-shot cell (:mod:`.cell`), the grid of cells with resume (:mod:`.grid`), cell
fingerprints, distribution shift and the demo."""
