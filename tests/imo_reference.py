"""Hand-written float64 references of the training-free methods (docs/methods.md, "Training-free
methods"), with the stream of
every term chosen explicitly, and a task on which every wrong choice gives another answer.

The tests compare the library against these, not against the library called twice. ``Wiring``
says which stream (True: corrected) feeds each term; ``Wiring.imo()`` is the contract: the
image-image terms (Tip/Tip-X affinity ``A`` and its range in the Tip-X rescale, GDA's support
and query) on corrected features, the text terms (zero-shot ``Z``, Tip-X's KL) on original ones.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from clipimo.features.file import FeatureSet, validate_features

# the paper's grid, endpoints included, and GDA's alpha list.
ALPHAS = np.linspace(0, 20, 200)
BETAS = np.linspace(0, 20, 20)
GAMMAS = np.linspace(0, 30, 50)
GDA_ALPHAS = np.array([1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0])
KL_TEMPERATURE = 0.5


@dataclass(frozen=True)
class Wiring:
    z: bool = False       # zero-shot term
    a: bool = False       # cache affinity A (Tip, Tip-X) / GDA support and query
    kl: bool = False      # Tip-X's KL term
    range: bool = False   # the [min A, max A] the KL is rescaled into

    @classmethod
    def original(cls) -> "Wiring":
        return cls()

    @classmethod
    def imo(cls) -> "Wiring":
        return cls(a=True, range=True)

    def wrong_variants(self) -> list["Wiring"]:
        """Every wiring that differs from this one in exactly one term."""
        return [replace(self, **{k: not getattr(self, k)}) for k in ("z", "a", "kl", "range")]


def feats(arrays: dict, split: str, corrected: bool) -> np.ndarray:
    name = "cache_keys" if split == "cache" else f"{split}_feats"
    return arrays[f"{name}_corrected" if corrected else name].astype(np.float64)


def zeroshot(arrays: dict, split: str, corrected: bool = False) -> np.ndarray:
    scale, bias = float(arrays.get("logit_scale", 100.0)), float(arrays.get("logit_bias", 0.0))
    return scale * feats(arrays, split, corrected) @ arrays["text_weights"].astype(np.float64) + bias


def onehot(arrays: dict) -> np.ndarray:
    c = arrays["text_weights"].shape[1]
    return np.eye(c)[arrays["cache_labels"]]


def affinity(arrays: dict, split: str, corrected: bool) -> np.ndarray:
    return feats(arrays, split, corrected) @ feats(arrays, "cache", corrected).T


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kl_matrix(arrays: dict, split: str, corrected: bool) -> np.ndarray:
    """KL(p_i || q_j) by its definition, p/q = softmax(f W / 0.5), one pair at a time."""
    w = arrays["text_weights"].astype(np.float64)
    p = softmax(feats(arrays, split, corrected) @ w / KL_TEMPERATURE)
    q = softmax(feats(arrays, "cache", corrected) @ w / KL_TEMPERATURE)
    out = np.empty((len(p), len(q)))
    for i in range(len(p)):
        for j in range(len(q)):
            out[i, j] = float(np.sum(p[i] * (np.log(p[i]) - np.log(q[j]))))
    return out


def cache_terms(arrays: dict, split: str, wiring: Wiring, with_kl: bool):
    """``Z``, ``A`` and (Tip-X) ``(-R) L`` of one split."""
    z = zeroshot(arrays, split, wiring.z)
    a = affinity(arrays, split, wiring.a)
    rl = None
    if with_kl:
        kl = kl_matrix(arrays, split, wiring.kl)
        rng = affinity(arrays, split, wiring.range)
        r = (kl - kl.min()) / (kl.max() - kl.min()) * (rng.max() - rng.min()) + rng.min()
        rl = -r @ onehot(arrays)
    return z, a, rl


def cache_logits(arrays, z, a, rl, alpha, beta, gamma=0.0) -> np.ndarray:
    out = z + alpha * np.exp(-beta * (1 - a)) @ onehot(arrays)
    return out if rl is None else out + gamma * rl


def hits(logits: np.ndarray, labels: np.ndarray) -> int:
    return int((logits.argmax(1) == labels).sum())


def first_best(counts: np.ndarray) -> tuple[int, ...]:
    """First maximum in alpha-major, then beta, then gamma order."""
    flat = counts.reshape(-1)
    best = int(np.flatnonzero(flat == flat.max())[0])
    return tuple(int(i) for i in np.unravel_index(best, counts.shape))


def percent(h: int, n: int) -> float:
    return 100.0 * h / n


def tip_like(arrays: dict, wiring: Wiring, with_kl: bool) -> dict:
    """Tip-Adapter / Tip-X: the grid searched on val, test scored at the first best point."""
    z, a, rl = cache_terms(arrays, "val", wiring, with_kl)
    labels = arrays["val_labels"]
    gammas = GAMMAS if with_kl else np.zeros(1)
    counts = np.zeros((len(ALPHAS), len(BETAS), len(gammas)), dtype=np.int64)
    for b, beta in enumerate(BETAS):
        e = np.exp(-beta * (1 - a)) @ onehot(arrays)
        for g, gamma in enumerate(gammas):
            base = z if rl is None else z + gamma * rl
            logits = base[None] + ALPHAS[:, None, None] * e[None]
            counts[:, b, g] = (logits.argmax(2) == labels[None]).sum(1)
    ia, ib, ig = first_best(counts)
    hp = {"alpha": float(ALPHAS[ia]), "beta": float(BETAS[ib])}
    if with_kl:
        hp["gamma"] = float(GAMMAS[ig])
    return {"val_acc": percent(int(counts[ia, ib, ig]), len(labels)),
            "test_acc": percent(hits(fixed_point(arrays, "test", wiring, with_kl, hp), arrays["test_labels"]),
                                len(arrays["test_labels"])),
            "hparams": hp}


def fixed_point(arrays: dict, split: str, wiring: Wiring, with_kl: bool, hp: dict) -> np.ndarray:
    z, a, rl = cache_terms(arrays, split, wiring, with_kl)
    return cache_logits(arrays, z, a, rl, hp["alpha"], hp["beta"], hp.get("gamma", 0.0))


def gda_fit(support: np.ndarray, labels: np.ndarray, num_classes: int):
    """GDA: class means, shared covariance, P = D pinv((n-1) S + tr(S) I), uniform prior."""
    mus = np.stack([support[labels == c].mean(0) for c in range(num_classes)])
    centred = support - mus[labels]
    cov = np.cov(centred.T)
    n, d = support.shape
    precision = d * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(d))
    weight = mus @ precision
    bias = np.log(1.0 / num_classes) - 0.5 * np.einsum("cd,cd->c", weight, mus)
    return weight, bias


def gda_logits(arrays: dict, split: str, wiring: Wiring, alpha: float) -> np.ndarray:
    """Fitted on every augmented view of the support set (E x N rows)."""
    views = arrays["cache_views_corrected" if wiring.a else "cache_views"].astype(np.float64)
    support = views.reshape(-1, views.shape[-1])
    labels = np.tile(arrays["cache_labels"], views.shape[0])
    weight, bias = gda_fit(support, labels, arrays["text_weights"].shape[1])
    return zeroshot(arrays, split, wiring.z) + alpha * (feats(arrays, split, wiring.a) @ weight.T + bias)


def gda(arrays: dict, wiring: Wiring) -> dict:
    labels = arrays["val_labels"]
    counts = np.array([hits(gda_logits(arrays, "val", wiring, a), labels) for a in GDA_ALPHAS])
    (best,) = first_best(counts)
    alpha = float(GDA_ALPHAS[best])
    test = hits(gda_logits(arrays, "test", wiring, alpha), arrays["test_labels"])
    return {"val_acc": percent(int(counts[best]), len(labels)),
            "test_acc": percent(test, len(arrays["test_labels"])), "hparams": {"alpha": alpha}}


def method(arrays: dict, name: str, wiring: Wiring | None = None) -> dict:
    """Reference result of a registry method; ``wiring`` overrides the streams its name implies."""
    base, imo = name.removesuffix("-imo"), name.endswith("-imo")
    wiring = wiring or (Wiring.imo() if imo else Wiring.original())
    if base == "zs":
        return {"val_acc": percent(hits(zeroshot(arrays, "val"), arrays["val_labels"]), len(arrays["val_labels"])),
                "test_acc": percent(hits(zeroshot(arrays, "test"), arrays["test_labels"]), len(arrays["test_labels"])),
                "hparams": {}}
    if base == "gda":
        return gda(arrays, wiring)
    return tip_like(arrays, wiring, base == "tipx")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def contrast_task(seed: int = 0, num_classes: int = 4, shots: int = 3, n_val: int = 40, n_test: int = 40,
                  dim: int = 16, cluster: float = 1.0) -> dict:
    """A task on which the streams disagree: original features point (weakly) at their class's text
    direction; corrected ones point at the NEXT class's text direction but carry a strong class
    cluster outside the text subspace. So corrected features mislead every text term and help
    every image-image term, and each wrong wiring changes the answer."""
    rng = np.random.default_rng(seed)
    text = np.eye(dim)[:, :num_classes]
    centres = unit(np.concatenate([np.zeros((num_classes, num_classes)),
                                   rng.standard_normal((num_classes, dim - num_classes))], 1))

    def draw(labels):
        noise = rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
        original = unit(0.35 * text.T[labels] + noise)
        corrected = unit(0.6 * text.T[(labels + 1) % num_classes] + cluster * centres[labels] + 0.6 * noise)
        return original, corrected

    arrays = {"text_weights": text.astype(np.float32)}
    for split, labels in (("cache", np.repeat(np.arange(num_classes), shots)),
                          ("val", rng.integers(0, num_classes, n_val)),
                          ("test", rng.integers(0, num_classes, n_test))):
        key = "cache_keys" if split == "cache" else f"{split}_feats"
        arrays[key], arrays[f"{key}_corrected"] = draw(labels)
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    arrays["cache_views"] = arrays["cache_keys"][None]
    arrays["cache_views_corrected"] = arrays["cache_keys_corrected"][None]
    return arrays


def as_featureset(arrays: dict) -> FeatureSet:
    return validate_features(arrays, "contrast task")


def encode_streams(model_name: str, adapter: str, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Both streams of ``paths`` (eval transform) straight from open_clip, not through the library's
    extractor: original from a model without adapters, corrected from a second one with the file's."""
    import torch
    from PIL import Image
    from torch.nn import functional as F

    from clipimo import load_adapters, load_clip

    plain, adapted = load_clip(model_name), load_clip(model_name)
    load_adapters(adapted.model, adapter)
    x = torch.stack([plain.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return tuple(F.normalize(bb.model.eval().encode_image(x), dim=-1).double().numpy()
                     for bb in (plain, adapted))


def random_adapter_file(model_name: str, path, seed: int = 0, std: float = 0.3, scale: float = 0.5) -> None:
    """An adapter file with every tensor random (Up included, so the streams differ)."""
    import torch

    from clipimo import add_adapters, load_clip, save_adapters

    bb = load_clip(model_name)
    add_adapters(bb.model, scale=scale)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in bb.model.visual.transformer.resblocks:
            for p in block.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    save_adapters(bb.model, path)


def class_images(folder, n: int, label: int, size: int = 36, seed: int = 0, noise: float = 50.0) -> list[str]:
    """``n`` noisy PNGs whose colour and texture depend on ``label``."""
    from PIL import Image

    rng = np.random.default_rng(1000 * seed + label)
    colour = np.random.default_rng(label).integers(95, 160, 3)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pixels = np.clip(colour + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{label}_{i}.png"
        Image.fromarray(pixels).save(path)
        out.append(str(path))
    return out


def tda_stream(feats, corrected: bool, cfg, seed: int):
    """TDA one image at a time (per-class lists sorted by entropy, caches updated before each image's
    own prediction): final logits [n, C] in stream order, the stream positions that entered each
    cache, and the labels in stream order. ``feats`` needs text_weights, test_feats(_corrected),
    test_labels; ``cfg`` a ``TdaConfig``."""
    import math

    import torch

    w = feats.text_weights.astype(np.float64)
    n, c = len(feats.test_labels), w.shape[1]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    f32 = torch.from_numpy(feats.test_feats[order])
    z32 = 100 * (f32 @ torch.from_numpy(feats.text_weights))
    # decisions from float32 entropies, as the method makes them
    ent = (-(torch.softmax(z32, 1) * torch.log_softmax(z32, 1)).sum(1)).tolist()
    keys = (feats.test_feats_corrected if corrected else feats.test_feats)[order].astype(np.float64)
    z = 100 * feats.test_feats[order].astype(np.float64) @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos, neg, entered = {}, {}, {"pos": [], "neg": []}
    out = np.zeros_like(z)

    def update(cache, label, item, cap, name):
        slots = cache.setdefault(label, [])
        if len(slots) < cap:
            slots.append(item)
        elif item[1] < slots[-1][1]:
            slots[-1] = item
        else:
            return
        entered[name].append(item[0])
        slots.sort(key=lambda s: s[1])

    for j in range(n):
        yhat = int(z32[j].argmax())
        update(pos, yhat, (j, ent[j]), cfg.pos_capacity, "pos")
        if cfg.entropy_band[0] < ent[j] / math.log2(c) < cfg.entropy_band[1]:
            update(neg, yhat, (j, ent[j]), cfg.neg_capacity, "neg")
        logit = z[j].copy()
        for label, slots in pos.items():
            for i, _ in slots:
                logit[label] += cfg.pos_alpha * math.exp(-cfg.pos_beta * (1 - keys[j] @ keys[i]))
        for slots in neg.values():
            for i, _ in slots:
                mask = (p[i] > cfg.mask_band[0]) & (p[i] < cfg.mask_band[1])
                logit -= cfg.neg_alpha * math.exp(-cfg.neg_beta * (1 - keys[j] @ keys[i])) * mask
        out[j] = logit
    return out, entered, feats.test_labels[order]
