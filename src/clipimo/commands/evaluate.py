"""``clipimo evaluate``: run training-free methods on a features file and write the §8 JSON."""
from __future__ import annotations

import argparse
import json

from .._io import write_json
from ..backbone import RANDOM_INIT_WARNING
from ..evaluate import evaluate_features, format_table
from ..featurefile import read_npz, validate_features
from ..methods import METHODS

DEFAULT_METHODS = "zs,tip,tip-imo,tipx,tipx-imo"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate training-free methods on a features .npz",
        description="Search each method's hyper-parameters on val and report val/test top-1 (%%). "
                    f"Methods: {', '.join(METHODS)}.")
    p.add_argument("--features", required=True, metavar="FILE", help="features .npz (METHOD.md §8)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated method names (default: {DEFAULT_METHODS})")
    p.add_argument("--json", metavar="OUT", help="write {method: {test_acc, val_acc, hparams, test_top5, test_mean_per_class_recall}} here")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:index] (default: cpu)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    arrays = read_npz(args.features)
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    if meta.get("random_init"):
        print(f"WARNING: {RANDOM_INIT_WARNING}")
    if (meta.get("validation") or {}).get("tuned_on_test"):
        print("WARNING: this file's val_* features are the TEST split: the accuracies below are tuned on test")
    feats = validate_features(arrays, str(args.features))
    results = evaluate_features(feats, args.methods, device=args.device, progress=True)
    if args.json:
        write_json(args.json, results)
    print(format_table(results, markdown=args.markdown))
    return 0
