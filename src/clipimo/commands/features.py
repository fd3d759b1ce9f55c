"""``clipimo features``: encode a labelled image list into both streams and save them as .npz."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from .. import _io
from ..backbone import RANDOM_INIT_WARNING, load_clip
from ..data.generic import read_csv_list, read_image_folder
from ..distributed import setup_distributed
from ..errors import ClipimoError
from ..features import DEFAULT_SHARD_SIZE, FeatureExtractor


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """The options every command that builds a backbone shares."""
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name or model-config .json (default ViT-B-16)")
    parser.add_argument("--pretrained", default=None, help="pretrained tag (e.g. openai, webli), weights file or hf-hub:ORG/REPO[/FILE]; omit or 'none' for random init")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def add_extractor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default=None, help="IMO adapter .safetensors file or hf-hub:ORG/REPO[/FILE] (adds the corrected stream)")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default $CLIPIMO_CACHE or ~/.cache/clipimo)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(4, cores))")
    parser.add_argument("--skip-unreadable", action="store_true", help="leave out unreadable images (recorded in the output) instead of failing")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="fp32 (default, as the paper) or bf16 autocast (faster on GPUs); part of the cache key and recorded")
    parser.add_argument("--allow-backbone-mismatch", action="store_true",
                        help="use an adapter file recorded for another backbone identity (e.g. the same weights as tag vs file)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"images per feature-cache shard, the unit split across torchrun ranks (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--no-progress", action="store_true")


def make_extractor(args: argparse.Namespace, distributed: bool = False) -> FeatureExtractor:
    """The extractor the flags describe. With ``distributed`` (commands whose rank 0 alone writes the
    output), under torchrun (WORLD_SIZE > 1) it joins the process group, takes GPU LOCAL_RANK and
    splits the cache shards across ranks; other commands refuse torchrun."""
    if not distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ClipimoError(f"clipimo {args.command} runs as one process; under torchrun use `clipimo features` or "
                           "`clipimo run` to fill the feature cache, then run this command once")
    env = setup_distributed(args.device)
    backbone = load_clip(args.model, args.pretrained, device=env.device)
    if backbone.random_init and env.is_main:
        print(f"WARNING: {RANDOM_INIT_WARNING}")
    return FeatureExtractor(
        backbone,
        adapter=args.adapter,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.workers,
        precision=args.precision,
        progress=not args.no_progress,
        strict_backbone=not args.allow_backbone_mismatch,
        shard_size=args.shard_size,
        env=env,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="encode images into original and corrected features (.npz)")
    p.add_argument("--images", required=True, help="CSV list (path,label) or ImageFolder tree")
    p.add_argument("--out", required=True, help="output .npz (feats, feats_corrected, labels, logit_scale, logit_bias, "
                                                "meta; with --passes also views, views_corrected [E, N, D])")
    p.add_argument("--passes", type=int, default=0, help="0: eval transform; E>0: average E augmented views and keep "
                                                         "each (cache keys use 10)")
    p.add_argument("--seed", type=int, default=1, help="augmentation seed (with --passes)")
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = Path(args.images)
    items, classnames = read_image_folder(source) if source.is_dir() else read_csv_list(source, verify_files=False)
    extractor = make_extractor(args, distributed=True)
    try:
        feats = extractor.image_features(items, passes=args.passes, seed=args.seed, skip_unreadable=args.skip_unreadable)
    finally:
        extractor.env.cleanup()
    if not extractor.env.is_main:  # rank 0 writes the output; the others only encoded their shards
        return 0
    meta = {
        "backbone": extractor.backbone.identity,
        "random_init": extractor.backbone.random_init,
        "adapter_sha256": extractor.adapter_hash,
        "precision": extractor.precision,
        "passes": args.passes,
        "seed": args.seed if args.passes else None,
        "classnames": classnames,
        "paths": feats.paths,
        "skipped": feats.skipped,
    }
    scale, bias = extractor.backbone.logit_scale_bias
    arrays = {"feats": feats.original.numpy(), "labels": feats.labels.numpy(), "meta": np.array(json.dumps(meta)),
              "logit_scale": np.array(scale), "logit_bias": np.array(bias)}
    for key, value in (("feats_corrected", feats.corrected), ("views", feats.views),
                       ("views_corrected", feats.views_corrected)):
        if value is not None:
            arrays[key] = value.numpy()
    with _io.atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    print(f"wrote {args.out}: {len(feats.paths)} images, dim {feats.original.shape[1]}, "
          f"streams {'original+corrected' if feats.corrected is not None else 'original'}"
          + (f", {len(feats.skipped)} skipped" if feats.skipped else ""))
    return 0
