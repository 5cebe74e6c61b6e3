"""Tokenisers for sequence data: strings <-> token ids, saved with the run (kind + vocabulary).

    char     one token per character (text or SMILES)
    smiles   SMILES split by the regular expression of Schwaller et al. 2019 (bracket atoms, Cl, Br,
             two-digit ring closures %nn are single tokens)
    selfies  SELFIES symbols (Krenn et al. 2020): every token string decodes to a valid molecule;
             the text shown to users is the decoded SMILES
    word     words and punctuation (lower-cased), joined by spaces when decoded

Ids 0..3 are special: <pad> (after the end), <bos> (the decoder's first input), <eos> (the end),
<unk> (Bowman et al.'s word dropout replaces decoder inputs by it). A sequence of L tokens is
stored as its ids, then <eos>, then <pad> up to ``max_length + 1``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import CvaeError, quoted

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
TOKENIZERS = ("char", "smiles", "selfies", "word")
MOLECULAR = ("smiles", "selfies")  # tokenisers whose strings are molecules
SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])")
WORD_REGEX = re.compile(r"[\w']+|[^\w\s]")


def _selfies():
    try:
        import selfies
    except ImportError:
        raise CvaeError("the selfies tokeniser needs the selfies package: pip install 'cvae[chem]'") from None
    return selfies


class Tokenizer:
    """One tokeniser kind and its vocabulary (``tokens``, the specials first)."""

    def __init__(self, kind: str, tokens: Sequence[str]):
        if kind not in TOKENIZERS:
            raise CvaeError(f"unknown tokeniser {kind!r}; choose one of {', '.join(TOKENIZERS)}")
        self.kind = kind
        self.tokens = list(tokens)
        if self.tokens[:len(SPECIALS)] != SPECIALS:
            raise CvaeError("a tokeniser vocabulary must start with " + ", ".join(SPECIALS))
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @property
    def molecular(self) -> bool:
        return self.kind in MOLECULAR

    def __len__(self) -> int:
        return len(self.tokens)

    # -- text <-> tokens --------------------------------------------------------------------------
    def split(self, text: str) -> list[str]:
        """The tokens of one string (for selfies: a SMILES string, converted first). Raises
        ValueError when the string cannot be tokenised (an unparseable SMILES for selfies)."""
        text = text.strip()
        if self.kind == "char":
            return list(text)
        if self.kind == "word":
            return WORD_REGEX.findall(text.lower())
        if self.kind == "smiles":
            tokens = SMILES_REGEX.findall(text)
            if "".join(tokens) != text:
                raise ValueError("characters the SMILES grammar does not know")
            return tokens
        sf = _selfies()
        try:
            encoded = sf.encoder(text)
        except Exception as e:  # selfies raises its own EncoderError
            raise ValueError(str(e).splitlines()[0] if str(e) else "not a SMILES string") from None
        if encoded is None:
            raise ValueError("not a SMILES string")
        return list(sf.split_selfies(encoded))

    def join(self, tokens: Iterable[str]) -> str:
        tokens = list(tokens)
        if self.kind == "word":
            return " ".join(tokens)
        if self.kind == "selfies":
            return _selfies().decoder("".join(tokens)) or ""
        text = "".join(tokens)
        # the rows were read stripped; a sample cut at the maximum length could end in a space
        return text.strip() if self.kind == "char" else text

    # -- tokens <-> ids ---------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], length: int, *, where: str = "the input",
               names: Sequence[str] | None = None) -> np.ndarray:
        """Strings -> ids (N, length) with <eos> and <pad>. A token the vocabulary lacks or a string
        longer than ``length - 1`` tokens is an error that names the string and where it is
        (``names[i]``, e.g. "line 7" of a file; "row i" by default)."""
        out = np.full((len(texts), length), PAD, np.int64)
        for i, text in enumerate(texts):
            row = names[i] if names is not None else f"row {i}"
            try:
                tokens = self.split(str(text))
            except ValueError as e:
                raise CvaeError(f"{where}, {row}: {quoted(text)} cannot be read as {self.kind} ({e})") from None
            if not tokens:
                raise CvaeError(f"{where}, {row} is empty; give a non-empty sequence")
            unknown = [t for t in tokens if t not in self.index]
            if unknown:
                raise CvaeError(f"{where}, {row}: the token {unknown[0]!r} in {quoted(text)} was never seen in training; "
                                f"the model knows {len(self.tokens) - len(SPECIALS)} tokens (remove or replace it)")
            if len(tokens) > length - 1:
                raise CvaeError(f"{where}, {row}: {quoted(text)} has {len(tokens)} tokens, more than the model's maximum "
                                f"of {length - 1}; shorten it or train with a larger --max-length")
            out[i, :len(tokens)] = [self.index[t] for t in tokens]
            out[i, len(tokens)] = EOS
        return out

    def decode(self, ids) -> list[str]:
        """Id rows (N, L) -> strings: tokens up to the first <eos>, specials dropped."""
        rows = np.asarray(ids).astype(np.int64)
        out = []
        for row in rows.reshape(-1, rows.shape[-1]):
            tokens = []
            for i in row:
                if i == EOS or i == PAD:
                    break
                if i >= len(SPECIALS) and i < len(self.tokens):
                    tokens.append(self.tokens[i])
            out.append(self.join(tokens))
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens}

    @classmethod
    def fit(cls, kind: str, token_lists: Iterable[list[str]]) -> Tokenizer:
        """The vocabulary of tokenised training strings, most frequent first (ties by name)."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        ordered = sorted(counts, key=lambda t: (-counts[t], t))
        return cls(kind, SPECIALS + ordered)
