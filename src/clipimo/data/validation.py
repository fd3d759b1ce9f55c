"""Which images tune the hyper-parameters, returned with a record the results store."""
from __future__ import annotations

from typing import Sequence

from ..errors import ClipimoError
from .benchmarks import DatasetSplits
from .fewshot import sample_per_class, stable_rng
from .items import LabelledImage

PROTOCOLS = ("full", "kshot", "heldout", "test")
KSHOT_MAX = 4          # CoOp: min(k, 4) validation images per class
HELDOUT_PER_CLASS = 10  # images per class carved from train when there is no val split


def default_protocol(splits: DatasetSplits) -> str:
    """``full`` when the dataset has a val split (the paper), else ``heldout`` (ImageNet)."""
    return "full" if splits.val else "heldout"


def validation_set(
    splits: DatasetSplits,
    k: int,
    seed: int,
    support: Sequence[LabelledImage],
    protocol: str | None = None,
    heldout_per_class: int = HELDOUT_PER_CLASS,
    allow_test_tuning: bool = False,
) -> tuple[list[LabelledImage], dict]:
    """The validation images for one (dataset, k, seed) run and a JSON-able protocol record.

    - ``full``: the whole val split.
    - ``kshot``: min(k, 4) per class from val, sampled from (dataset, k, seed).
    - ``heldout``: ``heldout_per_class`` per class from train minus ``support``, sampled from
      (dataset, k, seed): the default when there is no val split (ImageNet).
    - ``test``: the test split itself (what the paper did for ImageNet); refused unless
      ``allow_test_tuning``, and recorded as ``tuned_on_test: True``.
    """
    protocol = protocol or default_protocol(splits)
    if protocol not in PROTOCOLS:
        raise ClipimoError(f"unknown validation protocol {protocol!r}; "
                           f"expected one of {', '.join(PROTOCOLS)}")
    record: dict = {"protocol": protocol, "dataset": splits.name, "k": k, "seed": seed,
                    "tuned_on_test": False}
    if protocol in ("full", "kshot") and not splits.val:
        raise ClipimoError(
            f"{splits.name} has no val split, so protocol {protocol!r} is impossible; use "
            "'heldout' (carved from train, the default) or 'test' with allow_test_tuning"
        )
    if protocol == "full":
        items = list(splits.val)
        record["split"] = "val"
    elif protocol == "kshot":
        per_class = min(k, KSHOT_MAX)
        items = sample_per_class(splits.val, per_class, stable_rng("kshot-val", splits.name, k, seed))
        record.update(split="val", per_class=per_class)
    elif protocol == "heldout":
        taken = {item.path for item in support}
        rest = [item for item in splits.train if item.path not in taken]
        if not rest:
            raise ClipimoError(f"{splits.name}: no train images left outside the support set "
                               "for a held-out validation set")
        rng = stable_rng("heldout-val", splits.name, k, seed)
        items = sample_per_class(rest, heldout_per_class, rng)
        record.update(split="train", per_class=heldout_per_class, disjoint_from_support=True)
    else:
        if not allow_test_tuning:
            raise ClipimoError(
                "tuning hyper-parameters on the test split is refused unless explicitly allowed "
                "(allow_test_tuning=True); results then record tuned_on_test=true"
            )
        items = list(splits.test)
        record.update(split="test", tuned_on_test=True)
    record["size"] = len(items)
    return items, record
