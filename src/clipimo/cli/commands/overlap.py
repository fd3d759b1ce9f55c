"""``clipimo overlap``: intra-modal overlap, Bhattacharyya coefficient and feature variance,
original vs corrected, of a dataset split, an image folder/CSV, or a saved features file.

Writes ``OUT/overlap.json`` (every figure, the densities and where they came from) and
``OUT/overlap.<format>`` (the densities, original vs corrected), and prints the figures as a table.
"""
from __future__ import annotations

import argparse

from ...defaults import AUTO_BINS_RANGE, DEFAULT_AUTO_SAMPLE, DEFAULT_MAX_EXACT_PAIRS
from ..args import add_dataset_arg, add_figure_args, parse_xlim
from ..config import out_folder, path_arg
from ..model_args import add_backbone_args, add_extractor_args, make_extractor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "overlap",
        help="paired/unpaired image-similarity overlap, Bhattacharyya coefficient and feature variance",
        description="Intra-modal overlap diagnostics, original vs corrected stream. Source: --features FILE (a "
                    "'clipimo features' .npz of images or of a few-shot cell), or a backbone (--model/--pretrained, "
                    "with --adapter for the corrected stream) applied to --dataset NAME --root DIR or to "
                    "--images DIR_OR_CSV.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", type=path_arg, help="features .npz written by 'clipimo features' (--images or --task)")
    add_dataset_arg(src, "one benchmark name (with --root), e.g. Caltech101, or a custom task folder")
    src.add_argument("--images", type=path_arg, help="ImageFolder tree or CSV list (path,label)")
    p.add_argument("--root", default=".", type=path_arg, help="data root holding the benchmark folders (with --dataset)")
    p.add_argument("--split", choices=["test", "val", "train", "cache"], default=None,
                   help="dataset split (test|val|train, default test) or features-file split "
                        "(test|val|cache, default test)")
    p.add_argument("--out", required=True, type=out_folder("the overlap record"),
                   help="output folder for overlap.json and the figure overlap.<format>")
    p.add_argument("--bins", default="auto",
                   help="histogram bins over the similarities' range, or 'auto' (default): the Rice rule on "
                        f"the smaller group's pair count, {AUTO_BINS_RANGE[0]}-{AUTO_BINS_RANGE[1]}")
    p.add_argument("--xlim", default=None, metavar="LOW,HIGH",
                   help="fixed x-range of the figure, e.g. -0.2,1 (to compare datasets or backbones); "
                        "default: the occupied range")
    p.add_argument("--sample-pairs", type=int, default=None,
                   help="estimate from this many uniformly drawn pairs instead of all pairs")
    p.add_argument("--max-exact-pairs", type=int, default=DEFAULT_MAX_EXACT_PAIRS,
                   help=f"above this many pairs, sample {DEFAULT_AUTO_SAMPLE:,} pairs unless --exact")
    p.add_argument("--exact", action="store_true", help="always use every pair (memory-safe, may be slow)")
    p.add_argument("--seed", type=int, default=0, help="pair-sampling seed")
    p.add_argument("--title", default=None, help="figure title")
    add_figure_args(p)
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ...errors import ClipimoError
    from ...overlap.measure import check_bins, encode_source, load_feature_source, measure_overlap, overlap_text
    from ...report.overlap_file import is_overlap_folder, write_overlap
    from ...report.style import FigureOptions
    from ...utils.log import logger, warn_random_init
    from ...utils.outputs import refuse_foreign_files

    options = FigureOptions.parse(args.format, args.dpi)  # bad flags fail before any encoding
    xlim = parse_xlim(args.xlim)
    check_bins(args.bins)
    refuse_foreign_files(args.out, ["overlap.json", *(f"overlap.{fmt}" for fmt in options.formats)],
                         is_overlap_folder, "clipimo overlap")
    if args.dataset and len(args.dataset) != 1:
        raise ClipimoError(f"--dataset: overlap measures one dataset at a time, got {', '.join(args.dataset)}")
    if args.features:
        for flag, value in (("--adapter", args.adapter), ("--pretrained", args.pretrained)):
            if value is not None:
                logger.info(f"note: {flag} ignored with --features")
        src = load_feature_source(args.features, args.split)
    else:
        src = encode_source(make_extractor(args), dataset=args.dataset[0] if args.dataset else None, root=args.root,
                            split=args.split, images=args.images, adapter=args.adapter,
                            skip_unreadable=args.skip_unreadable)
    record = measure_overlap(src, bins=args.bins, sample_pairs=args.sample_pairs, exact=args.exact,
                             max_exact_pairs=args.max_exact_pairs, seed=args.seed)
    out = Path(args.out)
    written = write_overlap(record, out, title=args.title, options=options, xlim=xlim)
    if record["random_init"]:
        warn_random_init()
    elif record["random_init"] is None:
        logger.info("note: the features file does not record whether its backbone was pretrained")
    print(f"{src['source']['description']}: {record['n_items']:,} images, {record['n_classes']} classes, "
          f"dim {record['dim']}")
    print(overlap_text(record))
    print(f"wrote {out / 'overlap.json'} and {', '.join(str(p) for p in written.values())}")
    return 0
