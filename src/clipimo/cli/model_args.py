"""The flags that choose a backbone, an adapter and how images are encoded, shared by every command
that runs a model, and the feature extractor they build."""
from __future__ import annotations

import argparse
import os

from ..defaults import DEFAULT_SHARD_SIZE, IMAGEPCA_DEFAULT
from .args import add_device_arg, add_precision_arg
from .config import path_arg, source_arg


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """The options every command that builds a backbone shares."""
    parser.add_argument("--model", default="ViT-B-16", type=source_arg,
                        help="open_clip model name or model-config .json")
    parser.add_argument("--pretrained", default=None, type=source_arg,
                        help="pretrained tag (e.g. openai, webli), weights file or hf-hub:ORG/REPO[/FILE]; omit or "
                             "'none' for random init")
    add_device_arg(parser, "where images are encoded (and, in run and shift, where the search runs)")


def add_extractor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default=None, type=source_arg,
                        help="IMO adapter .safetensors file or hf-hub:ORG/REPO[/FILE] (adds the corrected stream)")
    parser.add_argument("--cache-dir", default=None, type=path_arg,
                        help="feature cache folder (default: $CLIPIMO_CACHE or ~/.cache/clipimo)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoding batch")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(4, cores))")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out unreadable images (recorded in the output) instead of failing")
    add_precision_arg(parser, "part of the cache key and recorded")
    parser.add_argument("--allow-backbone-mismatch", action="store_true",
                        help="use an adapter file recorded for another backbone identity (e.g. the same weights as tag vs file)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help="images per feature-cache shard, the unit split across torchrun ranks")


def add_correction_args(parser: argparse.ArgumentParser) -> None:
    """Inputs of the training-free corrections (textpca's class names, imagepca's generic images)."""
    parser.add_argument("--textpca-classnames", metavar="FILE", type=path_arg,
                        help="textpca: ImageNet class names (one per line, or classnames.txt '<wnid> <name>')")
    parser.add_argument("--imagepca-images", metavar="PATH", type=path_arg,
                        help="imagepca: generic images (CSV path,label or folder), e.g. the adapter's training set")
    parser.add_argument("--imagepca", default=IMAGEPCA_DEFAULT, metavar="MODE",
                        help="imagepca (a control): abtt-K removes the top K principal directions, whiten whitens")


def add_prompt_args(parser: argparse.ArgumentParser) -> None:
    """Prompts of custom task folders (benchmarks keep the protocol's)."""
    parser.add_argument("--templates", metavar="FILE", default=None, type=path_arg,
                        help="custom tasks: prompt templates, one per line with one {} for the class name; other "
                             "braces are literal text (default 'a photo of a {}.')")
    parser.add_argument("--classnames", metavar="FILE", default=None, type=path_arg,
                        help="custom tasks: one 'folder_name: readable name' per line; folders not listed keep their name")


def make_extractor(args: argparse.Namespace, distributed: bool = False):
    """A FeatureExtractor from the backbone and extractor options. With ``distributed`` (commands whose
    rank 0 alone writes the output), under torchrun (WORLD_SIZE > 1) it joins the process group, takes
    GPU LOCAL_RANK and splits the cache shards across ranks; other commands refuse torchrun."""
    from ..api import build_extractor
    from ..errors import ClipimoError
    from ..utils.distributed import setup_distributed
    from .output import progress_setting

    if not distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ClipimoError(f"clipimo {args.command} runs as one process; under torchrun use `clipimo features` or "
                           "`clipimo run` to fill the feature cache, then run this command once")
    return build_extractor(args.model, args.pretrained, adapter=args.adapter, device=args.device,
                           cache_dir=args.cache_dir, batch_size=args.batch_size, workers=args.workers,
                           precision=args.precision, progress=progress_setting(args),
                           strict_backbone=not args.allow_backbone_mismatch, shard_size=args.shard_size,
                           env=setup_distributed(args.device))
