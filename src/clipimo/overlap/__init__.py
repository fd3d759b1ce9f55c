"""Intra-modal overlap diagnostics: similarity histograms of same-class and different-class image
pairs (:mod:`.stats`) and the measurement of one image set on both streams (:mod:`.measure`)."""
