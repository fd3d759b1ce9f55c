"""``clipimo shift`` with several seeds: each seed's targets are scored with that seed's own cache
and chosen point. Every seed's source and target scores are re-derived in float64 from the stand-in
features of the images that seed's cell used (test_stream_wiring_runs), on seeds whose caches
differ and where scoring a later seed with the first seed's cache, its point or both changes its
target scores, so a shift that reused any of them would fail here."""
from __future__ import annotations

import imo_reference as ref
import numpy as np
import pytest
from conftest import put_image
from test_stream_wiring_runs import (
    NUM_CLASSES,
    TARGETS,
    StandInExtractor,
    _restricted_acc,
    hand_arrays,
    stand_in_shift,  # noqa: F401  (the fixture)
)

from clipimo.experiment.grid import RunConfig
from clipimo.experiment.shift import run_shift

SEEDS = [1, 2, 3]
METHODS = ["tip", "tip-imo", "tipx-imo", "gda-imo"]
TARGET_IMAGES = 24  # per class: enough that a cache or a point of another seed moves some score


def _seed_cells(extractor, images, seed):
    """The (items, passes, seed) lists of one seed's cell: its support keys (with passes), then the
    val and test lists the same cell encodes next."""
    support = next(c for c in extractor.calls if c[1] == 2 and c[2] == seed)
    i = extractor.calls.index(support)
    val, test = extractor.calls[i + 1], extractor.calls[i + 2]
    assert all(p.startswith(str(images / "train")) for p, _ in val[0]) and val[1] == 0
    assert all(p.startswith(str(images / "val")) for p, _ in test[0]) and test[1] == 0
    return support, val, test


def _more_target_images(root):
    wnids = [f"n{c:08d}" for c in range(NUM_CLASSES)]
    for folder, subset in TARGETS.values():
        for c in subset:
            for i in range(TARGET_IMAGES):
                put_image(root / folder / wnids[c] / f"{i}.png")


def test_each_seed_scores_the_targets_with_its_own_cache_and_point(stand_in_shift, tmp_path):  # noqa: F811
    root = stand_in_shift
    _more_target_images(root)
    extractor = StandInExtractor()
    cfg = RunConfig(root=str(root), datasets=["ImageNet"], shots=[2], seeds=SEEDS, methods=METHODS, augment_passes=2)
    result = run_shift(cfg, extractor, tmp_path / "shift", targets=list(TARGETS), progress=False)
    rows = {(r["target"], r["seed"], r["method"]): r for r in result["per_seed"]}
    images = root / "imagenet" / "images"
    targets = {name: (extractor.lists(root / folder)[0][0], sorted(subset))
               for name, (folder, subset) in TARGETS.items()}

    sources, tuned = {}, {}
    for seed in SEEDS:
        sources[seed] = hand_arrays(*_seed_cells(extractor, images, seed))
        tuned[seed] = {m: ref.method(sources[seed], m) for m in METHODS}

    def scores(m, cache_seed, point_seed=None):
        """The targets (the same images for every seed) scored with the cache of ``cache_seed`` and
        the point chosen on ``point_seed`` (the same seed by default)."""
        wiring = ref.Wiring.imo() if m.endswith("-imo") else ref.Wiring.original()
        hp = tuned[cache_seed if point_seed is None else point_seed][m]["hparams"]
        return [_restricted_acc(sources[cache_seed], items, classes, m, hp, wiring) for items, classes in targets.values()]

    for seed in SEEDS:
        for m in METHODS:
            source = rows[("ImageNet", seed, m)]
            assert (source["test_acc"], source["hparams"]) == (tuned[seed][m]["test_acc"], tuned[seed][m]["hparams"])
            got = [rows[(name, seed, m)]["test_acc"] for name in targets]
            assert got == pytest.approx(scores(m, seed)), (seed, m)
            assert all(rows[(name, seed, m)]["hparams"] == tuned[seed][m]["hparams"] for name in targets)

    # Power: the seeds sample other caches and choose other points, and the first seed's cache, its
    # point, or both give every later seed other target scores for some method.
    first = SEEDS[0]
    for seed in SEEDS[1:]:
        assert not np.allclose(sources[seed]["cache_keys"], sources[first]["cache_keys"])
        assert any(tuned[seed][m]["hparams"] != tuned[first][m]["hparams"] for m in METHODS), seed
        for cache_seed, point_seed in ((first, first), (first, seed), (seed, first)):
            assert any(scores(m, cache_seed, point_seed) != scores(m, seed) for m in METHODS), (seed, cache_seed)
    # and the mean rows average the per-seed rows of each target
    for row in result["rows"]:
        accs = [rows[(row["target"], s, row["method"])]["test_acc"] for s in SEEDS]
        assert row["n"] == len(SEEDS) and row["test_acc"] == pytest.approx(float(np.mean(accs)))


def test_each_seed_trains_tip_f_with_its_own_options(stand_in_shift, tmp_path):  # noqa: F811
    """Tip-F's keys are trained per seed with the run's batch and that seed's order: the source row
    is Tip-F-IMO run on the seed's hand-keyed arrays with those options, and the targets are scored
    by the float64 reference of Tip-IMO on the keys so trained (training itself is pinned in
    test_tipf). With one key per batch the seed and the batch both change the keys."""
    from clipimo.methods.common import MethodOptions, Problem
    from clipimo.methods.registry import run_method
    from clipimo.methods.tipf import trained_problem
    from clipimo.utils.device import full_float32

    root, seeds, batch = stand_in_shift, [1, 2], 1
    _more_target_images(root)
    extractor = StandInExtractor()
    cfg = RunConfig(root=str(root), datasets=["ImageNet"], shots=[2], seeds=seeds, methods=["tip-f-imo"],
                    augment_passes=2, tipf_batch=batch)
    result = run_shift(cfg, extractor, tmp_path / "shift", targets=list(TARGETS), progress=False)
    rows = {(r["target"], r["seed"]): r for r in result["per_seed"] if r["method"] == "tip-f-imo"}
    images = root / "imagenet" / "images"
    targets = [(extractor.lists(root / folder)[0][0], sorted(subset)) for folder, subset in TARGETS.values()]

    def scores(arrays, options, hp):
        with full_float32():
            trained, _ = trained_problem(Problem.from_features(ref.as_featureset(arrays)), True, options)
        keyed = {**arrays, "cache_keys_corrected": trained.cache_keys_corrected.numpy()}
        return [_restricted_acc(keyed, items, classes, "tip-imo", hp, ref.Wiring.imo()) for items, classes in targets]

    def result(arrays, options):
        """The source row (test top-1, point) and the target scores of one seed's cell under ``options``."""
        with full_float32():
            tuned = run_method("tip-f-imo", Problem.from_features(ref.as_featureset(arrays)), options)
        return tuned.test_acc, tuned.hparams, scores(arrays, options, tuned.hparams)

    wrong = []
    for seed in seeds:
        arrays = hand_arrays(*_seed_cells(extractor, images, seed))
        test_acc, hp, target_scores = result(arrays, MethodOptions(seed=seed, tipf_batch=batch, dataset="ImageNet"))
        assert (rows[("ImageNet", seed)]["test_acc"], rows[("ImageNet", seed)]["hparams"]) == (test_acc, hp), seed
        assert [rows[(name, seed)]["test_acc"] for name in TARGETS] == pytest.approx(target_scores), seed
        # Power: the default batch, or the first seed's order, gives this seed another row somewhere.
        wrong.append([result(arrays, other) != (test_acc, hp, target_scores) for other in (
            MethodOptions(seed=seed, dataset="ImageNet"), MethodOptions(seed=seeds[0], tipf_batch=batch, dataset="ImageNet"))])
    assert any(w[0] for w in wrong) and wrong[1][1]
