"""Few-shot sampling, support indices and validation protocols (in-memory splits, no files)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from clipimo.data import (
    DatasetSplits,
    LabelledImage,
    default_protocol,
    few_shot_support,
    load_support_index,
    sample_few_shot,
    save_support_index,
    validation_set,
)
from clipimo.errors import ClipimoError


def make_splits(name: str = "Toy", sizes=(20, 3, 1, 10), val_per_class: int = 6,
                root: str = "/data/toy") -> DatasetSplits:
    """Class c has sizes[c] train images (so some classes have fewer than k)."""
    def items(split: str, counts) -> list[LabelledImage]:
        return [LabelledImage(f"{root}/{split}/c{c}/{i:03d}.jpg", c)
                for c, n in enumerate(counts) for i in range(n)]
    return DatasetSplits(
        name=name, root=root, classnames=[f"c{c}" for c in range(len(sizes))],
        templates=["a photo of a {}."], train=items("train", sizes),
        val=items("val", [val_per_class] * len(sizes)) if val_per_class else [],
        test=items("test", [5] * len(sizes)),
    )


def test_sampling_is_deterministic_and_exact_per_class():
    ds = make_splits()
    state = np.random.get_state()
    support = sample_few_shot(ds.name, ds.train, k=4, seed=1)
    assert np.all(np.random.get_state()[1] == state[1])  # global RNG untouched
    assert support == sample_few_shot(ds.name, list(reversed(ds.train)), k=4, seed=1)
    assert Counter(it.label for it in support) == {0: 4, 1: 3, 2: 1, 3: 4}  # min(k, n_c)
    assert len(set(support)) == len(support)
    assert support == sorted(support, key=lambda it: (it.label, it.path))
    for k in (1, 2, 8, 16):
        counts = Counter(it.label for it in sample_few_shot(ds.name, ds.train, k, 3))
        assert counts == {c: min(k, n) for c, n in enumerate((20, 3, 1, 10))}


def test_different_seeds_k_and_datasets_differ():
    ds = make_splits()
    sets = {
        (name, k, seed): frozenset(sample_few_shot(name, ds.train, k, seed))
        for name in ("Toy", "Other") for k in (2, 4) for seed in (1, 2, 3)
    }
    assert len(set(sets.values())) == len(sets)


def test_pinned_sample_does_not_drift():
    # Support sets must stay reproducible across versions: the rng recipe must not change silently.
    ds = make_splits()
    support = sample_few_shot("Toy", ds.train, k=2, seed=1)
    assert [ds.relpath(it) for it in support] == [
        "train/c0/001.jpg", "train/c0/010.jpg", "train/c1/001.jpg", "train/c1/002.jpg",
        "train/c2/000.jpg", "train/c3/003.jpg", "train/c3/009.jpg",
    ]


def test_support_index_roundtrip_and_mismatch(tmp_path):
    ds = make_splits()
    index = tmp_path / "support" / "toy_k4_s1.json"
    support = few_shot_support(ds, k=4, seed=1, index_path=index)
    saved = json.loads(index.read_text())
    assert saved["dataset"] == "Toy" and saved["k"] == 4 and saved["seed"] == 1
    assert saved["items"][0] == ["train/c0/" + support[0].path.rsplit("/", 1)[1], 0]
    assert load_support_index(index, ds)["items"] == support
    assert few_shot_support(ds, k=4, seed=1, index_path=index) == support  # verified reuse

    save_support_index(index, ds, 4, 1, support[1:])
    with pytest.raises(ClipimoError, match=r"toy_k4_s1\.json: existing support index does not match"):
        few_shot_support(ds, k=4, seed=1, index_path=index)
    with pytest.raises(ClipimoError, match="existing support index does not match the Toy k=4 seed=2"):
        few_shot_support(ds, k=4, seed=2, index_path=tmp_path / "support" / "toy_k4_s1.json")
    other = make_splits(name="Other")
    save_support_index(index, ds, 4, 1, support)
    with pytest.raises(ClipimoError, match="support index is for 'Toy', not 'Other'"):
        few_shot_support(other, k=4, seed=1, index_path=index)
    (tmp_path / "junk.json").write_text('{"items": []}')
    with pytest.raises(ClipimoError, match="not a clipimo support index"):
        load_support_index(tmp_path / "junk.json", ds)


def test_full_and_kshot_protocols():
    ds = make_splits()
    support = sample_few_shot(ds.name, ds.train, 16, 1)
    assert default_protocol(ds) == "full"
    items, record = validation_set(ds, 16, 1, support)
    assert items == ds.val
    assert record == {"protocol": "full", "dataset": "Toy", "k": 16, "seed": 1,
                      "tuned_on_test": False, "split": "val", "size": 24}
    for k, per_class in ((1, 1), (2, 2), (16, 4)):
        items, record = validation_set(ds, k, 1, support, protocol="kshot")
        assert Counter(it.label for it in items) == {c: per_class for c in range(4)}
        assert record["per_class"] == per_class and record["split"] == "val"
        assert items == validation_set(ds, k, 1, support, protocol="kshot")[0]
    assert validation_set(ds, 2, 1, support, "kshot")[0] != validation_set(ds, 2, 2, support, "kshot")[0]


def test_heldout_is_disjoint_from_support_and_default_without_val():
    ds = make_splits(name="ImageNet", sizes=(30,) * 50, val_per_class=0)
    assert default_protocol(ds) == "heldout"
    for k in (1, 16):
        for seed in (1, 2, 3):
            support = sample_few_shot(ds.name, ds.train, k, seed)
            items, record = validation_set(ds, k, seed, support)
            assert not set(items) & set(support)
            assert Counter(it.label for it in items) == {c: 10 for c in range(50)}
            assert record["protocol"] == "heldout" and record["tuned_on_test"] is False
            assert record["disjoint_from_support"] and record["split"] == "train"
            assert items == validation_set(ds, k, seed, support)[0]
    # a class whose images are all in the support set contributes nothing, not a clash
    small = make_splits(name="Tiny", sizes=(2, 12), val_per_class=0)
    support = sample_few_shot(small.name, small.train, 2, 1)
    items, _ = validation_set(small, 2, 1, support, heldout_per_class=4)
    assert Counter(it.label for it in items) == {1: 4}


def test_test_tuning_needs_explicit_flag_and_is_recorded():
    ds = make_splits(name="ImageNet", val_per_class=0)
    support = sample_few_shot(ds.name, ds.train, 4, 1)
    with pytest.raises(ClipimoError, match="allow_test_tuning=True"):
        validation_set(ds, 4, 1, support, protocol="test")
    items, record = validation_set(ds, 4, 1, support, protocol="test", allow_test_tuning=True)
    assert items == ds.test and record["tuned_on_test"] is True and record["split"] == "test"
    with pytest.raises(ClipimoError, match="ImageNet has no val split, so protocol 'kshot'"):
        validation_set(ds, 4, 1, support, protocol="kshot")
    with pytest.raises(ClipimoError, match="unknown validation protocol 'cv'"):
        validation_set(ds, 4, 1, support, protocol="cv")
