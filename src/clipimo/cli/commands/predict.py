"""``clipimo predict``: classify images with a classifier saved by ``clipimo evaluate --save-classifier``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import out_file, path_arg
from ..model_args import add_backbone_args, add_extractor_args, make_extractor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify images with a saved classifier: top-k labels and probabilities (CSV/JSON)",
        description="Encodes the images with the backbone, weights and adapter the classifier file records "
                    "(--model, --pretrained and --adapter override them, e.g. for a moved file; each is checked "
                    "against the classifier before the model loads) and applies its method at its tuned hyper-parameters. "
                    "Probabilities are the softmax of the method's logits. Tip-X rescales its KL term over the "
                    "images classified together.")
    p.add_argument("--classifier", required=True, metavar="FILE", type=path_arg, help="classifier .safetensors from 'clipimo evaluate --save-classifier'")
    p.add_argument("--images", required=True, type=path_arg, help="an image, a folder of images (searched recursively) or a CSV with a 'path' column")
    p.add_argument("--top-k", type=int, default=5, help="labels per image")
    p.add_argument("--out", default=None, type=out_file("a predictions file", ".csv", ".json"),
                   help="predictions file: .csv or .json (default: CSV on stdout)")
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=run, model=None)  # unset: the classifier's


def run(args: argparse.Namespace) -> int:
    from ...methods.classifier import list_images, load_classifier, predictions_text
    from ...utils import fileio

    suffix = Path(args.out).suffix.lower() if args.out else ".csv"  # .csv or .json: checked by its OutPath type
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    clf = load_classifier(args.classifier)
    paths = list_images(args.images)
    source = clf.model_source(args.model, args.pretrained, args.adapter)  # checked before the model loads
    args = argparse.Namespace(**{**vars(args), **source})
    predictions = clf.predict(make_extractor(args), paths, top_k=args.top_k, skip_unreadable=args.skip_unreadable,
                              device=args.device)
    text = predictions_text(predictions, suffix[1:])
    if args.out:
        fileio.write_text(args.out, text)
        print(f"wrote {args.out}: {len(predictions)} images, top-{args.top_k} of {len(clf.classnames)} classes ({clf.method})")
    else:
        print(text, end="")
    return 0
