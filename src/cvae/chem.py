"""RDKit in one place: parsing, canonical SMILES and the molecular properties a condition can name.

RDKit is a field dependency (``pip install 'cvae[chem]'``): it is imported when a molecule is first
read, and its absence is one error line that says what to install.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import CvaeError

# Properties computed from the molecule when a condition names them and the data lacks the column:
# name -> (what it is, RDKit function name). Crippen logP (Wildman & Crippen 1999) and QED
# (Bickerton et al. 2012) as in ChemVAE; the others as in Lim et al. 2018.
PROPERTIES = {
    "logp": "Crippen logP (octanol-water partition coefficient)",
    "qed": "quantitative estimate of drug-likeness (0..1)",
    "mw": "molecular weight (g/mol)",
    "tpsa": "topological polar surface area",
    "hbd": "hydrogen-bond donors (Lipinski)",
    "hba": "hydrogen-bond acceptors (Lipinski)",
}


def rdkit():
    """The rdkit.Chem module, RDKit's own logging silenced (a bad SMILES is counted, not printed)."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise CvaeError("molecules need RDKit: pip install 'cvae[chem]'") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


# RDKit's parser and canonicaliser recurse along the chain: a SMILES of 20,000 characters overflows the
# stack and kills the process (a segmentation fault, no exception; 10,000 survived here). No molecule of
# this field comes near it (QM9's and MOSES' longest are under 100 characters).
MAX_SMILES_CHARS = 2000


def mol(smiles: str):
    """The RDKit molecule of a SMILES string, or None when it does not parse, is empty, or is longer than
    ``MAX_SMILES_CHARS`` (never handed to RDKit, which would crash on it)."""
    if not smiles or not smiles.strip() or len(smiles) > MAX_SMILES_CHARS:
        return None
    return rdkit().MolFromSmiles(smiles.strip())


def not_a_molecule(smiles: str) -> str:
    """Why a string that :func:`mol` refused is not a molecule, in words for an error message."""
    if smiles and len(smiles) > MAX_SMILES_CHARS:
        return f"is longer than {MAX_SMILES_CHARS:,} characters, the most cvae gives RDKit (its parser crashes on far longer ones)"
    return "is not a valid SMILES string (RDKit cannot parse it)"


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES, or None for a string that is not a molecule."""
    m = mol(smiles)
    return rdkit().MolToSmiles(m) if m is not None else None


def property_functions() -> dict[str, Callable]:
    rdkit()
    from rdkit.Chem import QED, Crippen, Descriptors, Lipinski, rdMolDescriptors

    return {"logp": Crippen.MolLogP, "qed": QED.qed, "mw": Descriptors.MolWt, "tpsa": rdMolDescriptors.CalcTPSA,
            "hbd": Lipinski.NumHDonors, "hba": Lipinski.NumHAcceptors}


def properties(smiles: Sequence[str | None], names: Sequence[str]) -> np.ndarray:
    """(N, len(names)) property values of the molecules; NaN for a string that is not a molecule."""
    funcs = property_functions()
    unknown = [n for n in names if n not in funcs]
    if unknown:
        raise CvaeError(f"cannot compute {', '.join(unknown)} from a molecule; computable: {', '.join(PROPERTIES)}")
    out = np.full((len(smiles), len(names)), np.nan)
    for i, s in enumerate(smiles):
        m = mol(s) if s else None
        if m is not None:
            out[i] = [float(funcs[n](m)) for n in names]
    return out
