"""``clipimo adapter card|push``: publish an adapter file on the Hugging Face Hub with a model card."""
from __future__ import annotations

import argparse

from ..config import out_folder, path_arg, source_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapter", help="write a Hub model-card folder for an adapter, or push it to the Hub")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    card = actions.add_parser("card", help="write DIR/adapter.safetensors and DIR/README.md (model card)")
    card.add_argument("adapter", type=source_arg, help="adapter .safetensors file or hf-hub:ORG/REPO[/FILE]")
    card.add_argument("--out", required=True, type=out_folder("an adapter card"), help="output folder")
    card.add_argument("--repo", default=None, help="ORG/REPO the card's loading examples name (default: a local file)")
    card.add_argument("--force", action="store_true",
                      help="replace an adapter.safetensors or README.md in --out that an earlier card did not write")
    card.set_defaults(func=run_card)
    push = actions.add_parser("push", help="upload the adapter and its model card to a Hub model repo")
    push.add_argument("adapter", type=path_arg, help="adapter .safetensors file")
    push.add_argument("repo", help="ORG/REPO (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--message", default=None, help="commit message")
    push.set_defaults(func=run_push)


def run_card(args: argparse.Namespace) -> int:
    from ...model.card import write_card

    out = write_card(args.adapter, args.out, args.repo, force=args.force)
    print(f"wrote {out}/adapter.safetensors and {out}/README.md")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from ...model.card import push_adapter

    url = push_adapter(args.adapter, args.repo, private=args.private, commit_message=args.message)
    print(f"pushed {args.adapter} to {args.repo}: {url}")
    return 0
