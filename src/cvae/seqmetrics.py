"""Metrics of generated molecules (MOSES, Polykovskiy et al. 2020) and of property control.

    validity         share of generated strings that RDKit parses into a molecule
    unique@1k / 10k  distinct canonical SMILES among the first 1,000 / 10,000 valid ones
    novelty          share of the distinct valid molecules absent from the training set
    IntDiv           1 - mean Tanimoto similarity of Morgan fingerprints (radius 2, 1024 bits) over
                     pairs of distinct valid molecules (Benhenda 2017; MOSES's IntDiv1)
    FCD              Frechet ChemNet Distance (Preuer et al. 2018) to a reference set, with the network
                     that the fcd-torch package ships
    property control requested vs achieved property over a grid of requests: MAE and Spearman's rho
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .chem import PROPERTIES, canonical, properties, rdkit
from .errors import CvaeError

FINGERPRINT_PAIRS = 100_000  # random pairs for IntDiv (its standard error is below 0.001 at this size)


def molecule_metrics(generated: Sequence[str], train: set[str], reference: Sequence[str] | None = None, *,
                     fcd: bool = True, seed: int = 0) -> dict:
    """The MOSES metrics of ``generated`` strings against canonical ``train`` SMILES and a ``reference``
    set for the FCD (None: no FCD)."""
    if not generated:
        raise CvaeError("no generated molecules to measure")
    canon = [canonical(s) if s else None for s in generated]
    valid = [s for s in canon if s]
    out = {"n_generated": len(generated), "validity": len(valid) / len(generated)}
    for k, name in ((1000, "unique@1k"), (10000, "unique@10k")):
        out[name] = len(set(valid[:k])) / min(k, len(valid)) if len(valid) >= k else None
    out["uniqueness"] = len(set(valid)) / len(valid) if valid else 0.0
    distinct = sorted(set(valid))
    out["novelty"] = (sum(s not in train for s in distinct) / len(distinct)) if distinct else 0.0
    out["int_div"] = internal_diversity(distinct, seed=seed) if len(distinct) > 1 else None
    if fcd and reference is not None and len(valid) >= 2 and len(reference) >= 2:
        out["fcd"] = frechet_chemnet_distance(valid, list(reference))
        out["fcd_reference_size"] = len(reference)
    return out


def internal_diversity(smiles: Sequence[str], *, seed: int = 0) -> float:
    """1 - mean Tanimoto similarity over random pairs of distinct molecules (all pairs when few)."""
    Chem = rdkit()
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]
    n = len(fps)
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= FINGERPRINT_PAIRS:
        sims = [s for i in range(1, n) for s in DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i])]
    else:
        a = rng.integers(0, n, FINGERPRINT_PAIRS)
        b = (a + rng.integers(1, n, FINGERPRINT_PAIRS)) % n
        sims = [DataStructs.TanimotoSimilarity(fps[i], fps[j]) for i, j in zip(a, b)]
    return float(1.0 - np.mean(sims))


def frechet_chemnet_distance(generated: Sequence[str], reference: Sequence[str]) -> float:
    try:
        from fcd_torch import FCD
    except ImportError:
        raise CvaeError("the FCD needs the fcd-torch package: python -m pip install --no-deps fcd-torch==1.0.7") from None
    with _quiet_warnings():
        return float(FCD(device="cpu", n_jobs=1)(list(generated), list(reference)))


class _quiet_warnings:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def computable(model) -> list[str]:
    """The model's continuous conditions that RDKit computes from a molecule (logp, qed, ...)."""
    if not getattr(getattr(model, "tokenizer", None), "molecular", False):
        return []
    return [a.name for a in model.schema.attributes if a.kind == "continuous" and a.name in PROPERTIES]


def request_grid(model, name: str, train_values: np.ndarray, points: int = 9) -> np.ndarray:
    """Requested values of one property: ``points`` quantiles (5% .. 95%) of its training values."""
    return np.quantile(train_values[np.isfinite(train_values)], np.linspace(0.05, 0.95, points))


def property_control(model, train_y: torch.Tensor, *, per_request: int = 100, points: int = 9, seed: int = 0,
                     temperature: float = 1.0, decode: str = "greedy") -> dict:
    """Per computable property: sample ``per_request`` molecules at each of ``points`` requested values
    (the other conditions at their training median / most common class), compute the achieved value,
    report MAE and Spearman's rho between requested and achieved over the valid molecules."""
    from scipy.stats import spearmanr

    names = computable(model)
    out = {}
    attrs = model.schema.attributes
    base = {}
    for j, a in enumerate(attrs):
        col = train_y[:, j].numpy()
        base[a.name] = float(np.median(col)) if a.kind == "continuous" else a.classes[int(np.bincount(col.astype(int)).argmax())]
    for name in names:
        j = model.schema.names.index(name)
        grid = request_grid(model, name, train_y[:, j].numpy(), points)
        requested, achieved = [], []
        for v in grid:
            cond = {**base, name: float(v)}
            strings, _ = model.sample_strings(per_request, cond, seed=seed, temperature=temperature, decode=decode)
            vals = properties([canonical(s) for s in strings], [name])[:, 0]
            ok = np.isfinite(vals)
            requested += [float(v)] * int(ok.sum())
            achieved += vals[ok].tolist()
        requested, achieved = np.array(requested), np.array(achieved)
        rho = spearmanr(requested, achieved).statistic if len(achieved) > 2 else math.nan
        per_point = [{"requested": round(float(v), 4),
                      "achieved_mean": float(achieved[requested == v].mean()) if (requested == v).any() else None}
                     for v in grid]
        out[name] = {"mae": float(np.abs(requested - achieved).mean()) if len(achieved) else None,
                     "spearman": float(rho), "n_valid": int(len(achieved)), "per_request": per_request,
                     "grid": per_point,
                     "train_std": float(np.nanstd(train_y[:, j].numpy()))}
    return out
