"""Defaults shared by the library and the command line, torch-free so ``clipimo --help`` stays fast."""

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_METHODS = ("zs", "tip", "tip-imo", "tipx", "tipx-imo")
# Corrected streams (clipimo.features.corrections) and imagepca's default mode.
CORRECTIONS = ("imo", "isoclip", "textpca", "imagepca")
IMAGEPCA_DEFAULT = "abtt-2"
PRECISIONS = ("fp32", "bf16")
# Augmented views kept per image: the views array is passes x images x dim floats, so the count is bounded.
MAX_PASSES = 1000
DEFAULT_SHARD_SIZE = 4096  # images per feature-cache shard, the unit torchrun ranks split (clipimo.features.extractor)


DEFAULT_MAX_EXACT_PAIRS = 250_000_000  # ~22k images: beyond that clipimo.overlap.measure samples pairs unless exact
DEFAULT_AUTO_SAMPLE = 20_000_000
AUTO_BINS_RANGE = (10, 200)  # what --bins auto may choose over the data's range (clipimo.overlap.stats.auto_bins)
MAX_OVERLAP_NOISE = 0.05  # above this sampling noise an overlap figure warns that its pairs are too few
FIGURE_FORMATS = ("png", "pdf", "svg")
DEFAULT_DPI = 200
