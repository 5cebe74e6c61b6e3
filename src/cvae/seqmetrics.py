"""Metrics of generated molecules (MOSES, Polykovskiy et al. 2020) and of property control.

    validity         share of generated strings that RDKit parses into a molecule
    unique@1k / 10k  distinct canonical SMILES among the first 1,000 / 10,000 valid ones (among all the
                     valid ones when fewer were made, as MOSES's fraction_unique does after its warning;
                     ``unique@1k_of`` / ``unique@10k_of`` then say over how many)
    novelty          share of the distinct valid molecules absent from the training set
    IntDiv           1 - mean Tanimoto similarity of Morgan fingerprints (radius 2, 1024 bits) over all
                     ordered pairs of the valid molecules, repeats and self-pairs included (Benhenda 2017;
                     MOSES's IntDiv1 exactly: moses/metrics/metrics.py, internal_diversity with
                     average_agg_tanimoto(agg='mean'), on every valid molecule)
    FCD              Frechet ChemNet Distance (Preuer et al. 2018) to a reference set (or to its stored
                     ChemNet statistics, as MOSES's FCD/Test), with the network that fcd-torch ships
    property control requested vs achieved property over a grid of requests: MAE and Spearman's rho
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .chem import PROPERTIES, canonical, properties, rdkit
from .errors import CvaeError
from .models.seqvae import GENERATE_DECODE, GENERATE_TOKEN_TEMPERATURE

TANIMOTO_BLOCK = 2048  # fingerprints per block of the all-pairs Tanimoto matrix (2048^2 floats: 16 MB)


def molecule_metrics(generated: Sequence[str], train: set[str], reference: Sequence[str] | None = None, *,
                     fcd: bool = True, moses: bool = False) -> dict:
    """The MOSES metrics of ``generated`` strings against canonical ``train`` SMILES and a ``reference``
    set for the FCD (None: no FCD). ``moses``: also novelty and FCD/Test as MOSES defines them for a
    model trained on (a subset of) its data: novelty against its whole training file
    (moses/metrics/metrics.py: novelty(gen, train) with train = get_dataset('train')) and the FCD to
    its test set's stored ChemNet statistics (get_statistics('test')['FCD']). The generated molecules
    go through ChemNet once for both FCDs."""
    if not generated:
        raise CvaeError("no generated molecules to measure")
    canon = [canonical(s) if s else None for s in generated]
    valid = [s for s in canon if s]
    out = {"n_generated": len(generated), "validity": len(valid) / len(generated)}
    for k, name in ((1000, "unique@1k"), (10000, "unique@10k")):
        # MOSES (moses/metrics/metrics.py, fraction_unique): the first k valid molecules, or, with fewer
        # than k (9,999 valid of 10,000 generated), all of them after a warning
        out[name] = len(set(valid[:k])) / min(k, len(valid)) if len(generated) >= k and valid else None
        if out[name] is not None and len(valid) < k:
            out[f"{name}_of"] = len(valid)
    out["uniqueness"] = len(set(valid)) / len(valid) if valid else 0.0
    out["novelty"] = novelty(valid, train)
    out["int_div"] = internal_diversity(valid) if len(set(valid)) > 1 else None
    references = {}
    if reference is not None and len(reference) >= 2:
        references["fcd"] = list(reference)
        out["fcd_reference_size"] = len(reference)
    if moses:
        from .data.sequences import moses_reference

        ref = moses_reference()
        out["novelty_moses_train"] = novelty(valid, ref["train"])
        references["fcd_moses_test"] = ref["test_fcd"]
    if fcd and references and len(valid) >= 2:
        out.update(frechet_chemnet_distances(valid, references))
    return out


def novelty(valid: Sequence[str], train: set[str]) -> float:
    """Share of the distinct valid (canonical) molecules absent from ``train`` (MOSES's novelty)."""
    distinct = set(valid)
    return sum(s not in train for s in distinct) / len(distinct) if distinct else 0.0


def internal_diversity(smiles: Sequence[str]) -> float:
    """MOSES's IntDiv1: 1 - the mean Tanimoto similarity over all n^2 ordered pairs of the molecules
    (repeats and self-pairs included; two empty fingerprints count as similarity 1, as in MOSES), with
    Morgan fingerprints of radius 2 and 1024 bits. Exact, in blocks of bit-matrix products."""
    Chem = rdkit()
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    bits = torch.from_numpy(np.stack([gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles])
                            .astype(np.float32))  # (n, 1024)
    counts = bits.sum(1)
    n, total = len(bits), 0.0
    for i in range(0, n, TANIMOTO_BLOCK):
        a = bits[i:i + TANIMOTO_BLOCK]
        for j in range(0, n, TANIMOTO_BLOCK):
            both = a @ bits[j:j + TANIMOTO_BLOCK].T  # bits set in both fingerprints
            union = counts[i:i + TANIMOTO_BLOCK, None] + counts[None, j:j + TANIMOTO_BLOCK] - both
            sim = torch.where(union > 0, both / union.clamp_min(1), torch.ones_like(both))
            total += float(sim.double().sum())
    return float(1.0 - total / (n * n))


def frechet_chemnet_distances(generated: Sequence[str], references: dict) -> dict:
    """The FCD of ``generated`` SMILES to each reference: a list of SMILES, or a reference set's stored
    ChemNet statistics ``{"mu": (512,), "sigma": (512, 512)}`` (MOSES's FCD/Test uses its test set's).
    ChemNet reads the generated molecules once."""
    try:
        from fcd_torch import FCD
    except ImportError:
        raise CvaeError("the FCD needs the fcd-torch package: python -m pip install --no-deps fcd-torch==1.0.7") from None
    with _quiet_warnings():
        fcd = FCD(device="cpu", n_jobs=1)
        generated_statistics = fcd.precalc(list(generated))
        return {name: float(fcd.metric(ref if isinstance(ref, dict) else fcd.precalc(list(ref)), generated_statistics))
                for name, ref in references.items()}


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
                     temperature: float = 1.0, decode: str = GENERATE_DECODE, beam: int = 5,
                     token_temperature: float = GENERATE_TOKEN_TEMPERATURE, guidance: float | None = None,
                     steer: float | None = None) -> dict:
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
            strings, _ = model.sample_strings(per_request, cond, seed=seed, temperature=temperature, decode=decode,
                                              beam=beam, token_temperature=token_temperature, guidance=guidance,
                                              steer=steer)
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
