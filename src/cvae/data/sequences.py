"""Sequence data: molecules (SMILES) or text from a CSV / .smi / .txt file, tokenised, with conditions.

    cvae train --data mols.csv --sequence smiles --condition logp:continuous,qed:continuous
    cvae train --data mols.smi --sequence smiles --condition logp,qed      (computed with RDKit)
    cvae train --data reviews.csv --sequence text --condition sentiment --tokenizer word
    cvae train --data qm9 --sequence smiles --condition logp,qed            (QM9 from the qm9pack package)
    cvae train --data moses --sequence smiles --limit 50000                 (MOSES from the molsets package)
    cvae train --data chatterbot --sequence text --condition language       (the chatterbot-corpus package;
    cvae train --data chatterbot:english --sequence text --condition topic   see cvae.data.chatterbot)

A row that cannot be used (an empty cell, a SMILES string RDKit cannot parse, a missing or
non-numeric condition value, more tokens than ``--max-length``) is skipped and counted; one line
on stderr says how many of each and the first few line numbers. Molecules are stored as RDKit's
canonical SMILES. The tokeniser's vocabulary is fitted on the rows kept and saved in the run.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import CvaeError
from ..tokens import MOLECULAR, TOKENIZERS, Tokenizer
from .core import Dataset, DataSplits, build_schema, parse_condition_spec
from .sources import RawData

# The sequence model's settings that suit token data (flags override them).
SEQUENCE_MODEL = {"model_class": "seqvae", "likelihood": "categorical", "hidden": [256], "latent_dim": 32}
SHOWN_LINES = 5  # line numbers quoted per reason a row was skipped
# without --max-length, rows longer than this many times the 90th percentile of the lengths (and than the
# floor) are skipped and counted: the batches are as long as the longest row kept
DEFAULT_LENGTH_FACTOR, DEFAULT_LENGTH_FLOOR = 4, 64


def _package_file(package: str, *parts: str, install: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CvaeError(f"this data set is read from the files of the {package} package: {install}")
    return Path(list(spec.submodule_search_locations)[0], *parts)


def _moses_rows() -> tuple[list[str], list[list[str]], list[int]]:
    """MOSES's 1,584,663 training molecules: its file is one SMILES column, read as lines (the csv
    module took 20 s over it)."""
    path = _package_file("moses", "dataset", "data", "train.csv.gz",
                         install="python -m pip install --no-deps molsets==0.3.1")
    lines = _open_text(path).read().splitlines()
    body = lines[1:]
    if not lines or lines[0].strip() != "SMILES" or not all(body) or any("," in line for line in body[:100]):
        return _read_table(path)  # not the layout molsets 0.3.1 ships (one column, no blank line): any CSV
    return ["SMILES"], [[s] for s in body], list(range(2, len(body) + 2))


@functools.lru_cache(maxsize=1)  # one read per process: several evaluations of a run reuse it
def moses_reference() -> dict:
    """MOSES's own reference sets as the molsets package ships them (Polykovskiy et al. 2020), for its
    definitions of novelty and FCD/Test: ``train`` is the set of its 1,584,663 training SMILES as
    written in the file (moses.dataset.get_dataset('train')), ``test_fcd`` the ChemNet mean and
    covariance of its 176,074 test molecules (get_statistics('test')['FCD']). That statistics file
    is a NumPy archive of a pickled dict, read only from the installed package, as MOSES reads it."""
    _, rows, _ = _moses_rows()
    stats = _package_file("moses", "dataset", "data", "test_stats.npz",
                          install="python -m pip install --no-deps molsets==0.3.1")
    fcd = np.load(stats, allow_pickle=True)["stats"].item()["FCD"]
    return {"train": {r[0] for r in rows if r}, "test_fcd": {"mu": fcd["mu"], "sigma": fcd["sigma"]}}


def _qm9_rows() -> tuple[list[str], list[list[str]], list[int]]:
    """QM9's 133,885 molecules (SMILES column of qm9pack's three CSV parts, in order)."""
    header, rows, lines = None, [], []
    for part in (1, 2, 3):
        path = _package_file("qm9pack", "data", f"qm9_part{part}.csv", install="python -m pip install --no-deps qm9pack==1.0.3")
        h, r, ln = _read_table(path, keep=("SMILES",))
        header = h
        rows += r
        lines += [x + 1_000_000 * (part - 1) for x in ln]  # part p's line k is reported as p,00k
    return header, rows, lines


def _chatterbot_rows(option: str | None = None):
    from .chatterbot import chatterbot_rows

    return chatterbot_rows(option)


# Named sources: a function giving (header, rows, line numbers); "name:OPTION" passes OPTION (chatterbot:
# the languages) to the sources that take one.
SEQUENCE_SOURCES = {"qm9": _qm9_rows, "moses": _moses_rows, "chatterbot": _chatterbot_rows}
MOLECULE_SOURCES = ("qm9", "moses")
SOURCES_WITH_OPTION = ("chatterbot",)


def named_source(source: str) -> tuple[str | None, str | None]:
    """("chatterbot", "english") for "chatterbot:english"; (None, None) when ``source`` is no named source."""
    name, sep, option = str(source).partition(":")
    if name not in SEQUENCE_SOURCES:
        return None, None
    if sep and name not in SOURCES_WITH_OPTION:
        raise CvaeError(f"--data {source}: {name} takes no ':' option; write --data {name}")
    return name, (option if sep else None)


def _open_text(path: Path):
    raw = path.read_bytes() if path.suffix != ".gz" else gzip.decompress(path.read_bytes())
    try:
        return io.StringIO(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise CvaeError(f"cannot read {path}: it is not UTF-8 text ({e.reason}); save it as UTF-8") from None


def _read_table(path: Path, keep: tuple[str, ...] | None = None) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows and their line numbers of a CSV/TSV file (blank lines skipped)."""
    f = _open_text(path)
    sample = f.read(4096)
    f.seek(0)
    try:  # only the delimiter is guessed; quoting is the standard one (a sniffed quote character can be wrong)
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    csv.field_size_limit(1 << 30)
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CvaeError(f"{path} is empty; it needs a header line and data rows") from None
    cols = [header.index(k) for k in keep] if keep else None
    rows, lines = [], []
    try:
        for r in reader:
            if not any(cell.strip() for cell in r):
                continue
            rows.append([r[i] if i < len(r) else "" for i in cols] if cols else r)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise CvaeError(f"{path}, line {reader.line_num}: not valid CSV ({e}); fix or remove that line") from None
    return (list(keep) if keep else header), rows, lines


def _read_lines(path: Path, column: str, molecular: bool) -> tuple[list[str], list[list[str]], list[int]]:
    """A .smi file (SMILES, optionally a name after white space) or a .txt file (one text per line)."""
    rows, lines = [], []
    for i, line in enumerate(_open_text(path), start=1):
        text = line.rstrip("\n").rstrip("\r")
        if molecular:
            text = text.split()[0] if text.split() else ""
            if i == 1 and text.lower() in ("smiles", column.lower()):
                continue  # a header line
        if not text.strip():
            continue
        rows.append([text])
        lines.append(i)
    return [column], rows, lines


def _read_rows(source: str, column: str, molecular: bool):
    name, option = named_source(source)
    if name is not None:
        header, rows, lines = SEQUENCE_SOURCES[name](option) if option is not None else SEQUENCE_SOURCES[name]()
        if name not in MOLECULE_SOURCES:
            if column not in header:
                raise CvaeError(f"--data {source} has no column {column!r} (--sequence); its columns: "
                                f"{', '.join(header)}")
        elif column != header[0] and column not in header:
            rename = header.index("SMILES") if "SMILES" in header else 0
            header = list(header)
            header[rename] = column  # --sequence names the molecule column whatever the package calls it
        return source, header, rows, lines
    path = Path(source).expanduser()
    if not path.is_file():
        raise CvaeError(f"no sequence file {source!r}: give a .csv/.tsv/.smi/.txt file (optionally .gz), "
                        f"or one of {', '.join(SEQUENCE_SOURCES)} (chatterbot:LANGUAGE[,LANGUAGE] for some languages)")
    suffixes = [s.lower() for s in path.suffixes]
    kind = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if kind in (".smi", ".txt"):
        header, rows, lines = _read_lines(path, column, molecular or kind == ".smi")
    elif kind in (".csv", ".tsv"):
        header, rows, lines = _read_table(path)
    else:
        raise CvaeError(f"cannot read sequences from {path}: expected a .csv, .tsv, .smi or .txt file")
    if column not in header:
        raise CvaeError(f"{path} has no column {column!r} (--sequence); its columns: {', '.join(header)}")
    return path.stem, header, rows, lines


def default_tokenizer(column: str, source: str) -> str:
    """SELFIES for molecules (every decoded string is a valid molecule), words for text; characters for
    the multilingual chatterbot corpus (Chinese, Japanese and Korean are not written with spaces)."""
    name, _ = named_source(source)
    if name == "chatterbot":
        return "char"
    molecular = column.lower() in ("smiles", "smi", "molecule", "mol") or name in MOLECULE_SOURCES \
        or Path(source).suffix.lower() == ".smi" or source.lower().endswith(".smi.gz")
    return "selfies" if molecular else "word"


class _Skips:
    """Rows skipped, per reason, with their first line numbers."""

    def __init__(self):
        self.lines: dict[str, list[int]] = {}

    def add(self, reason: str, line: int) -> None:
        self.lines.setdefault(reason, []).append(line)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.lines.values())

    def first(self, reason: str) -> list[int]:
        return sorted(self.lines[reason])[:SHOWN_LINES]  # rows are read in a shuffled order

    def summary(self) -> dict:
        return {reason: {"rows": len(v), "first_lines": self.first(reason)} for reason, v in self.lines.items()}

    def message(self, where: str, examined: int) -> str:
        parts = [f"{len(v):,} {reason} (line{'s' if len(v) > 1 else ''} {', '.join(map(str, self.first(reason)))}"
                 f"{', ...' if len(v) > SHOWN_LINES else ''})" for reason, v in self.lines.items()]
        return f"{where}: skipped {self.total:,} of {examined:,} rows: " + "; ".join(parts)


def load_sequences(source: str, *, sequence: str, condition=None, tokenizer: str | None = None,
                   max_length: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                   limit: int | None = None, quiet: bool = False) -> DataSplits:
    """Read, clean, tokenise and split a sequence data set (see the module's docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise CvaeError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 1:
        raise CvaeError(f"--limit must be a positive number of examples, got {limit}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise CvaeError(f"--max-length must be a whole number of tokens of at least 1, got {max_length!r}")
    kind = tokenizer or default_tokenizer(sequence, source)
    if kind not in TOKENIZERS:
        raise CvaeError(f"unknown --tokenizer {kind!r}; choose one of {', '.join(TOKENIZERS)}")
    molecular = kind in MOLECULAR
    name, header, rows, lines = _read_rows(source, sequence, molecular)
    col = header.index(sequence)
    from ..chem import PROPERTIES

    computable = [p for p in PROPERTIES if p not in header] if molecular else []
    if not molecular and condition not in (None, "", "none"):
        asked = [n.split(":")[0].strip() for n in str(condition).split(",")]
        lost = [n for n in asked if n in PROPERTIES and n not in header]
        if lost:
            raise CvaeError(f"--condition {', '.join(lost)}: RDKit computes {'it' if len(lost) == 1 else 'them'} for "
                            f"molecules read by the selfies or smiles tokeniser; the {kind} tokeniser reads "
                            f"{sequence!r} as text: pass --tokenizer selfies (or smiles), or give a column of values")
    wanted = parse_condition_spec(condition if condition is not None else "none", [h for h in header if h != sequence]
                                  + computable, str(source))
    wanted_kind = dict(wanted)
    if not rows:
        raise CvaeError(f"{source} has no data rows")

    # The rows in a random order (seeded): only as many are checked as --limit needs.
    order = np.random.default_rng(seed).permutation(len(rows))
    needed = math.inf if limit is None else limit + max(1, math.ceil(limit * val_fraction / (1 - val_fraction)))
    tok = Tokenizer(kind, ["<pad>", "<bos>", "<eos>", "<unk>"])
    if molecular:
        from ..chem import MAX_SMILES_CHARS, canonical
    skips, texts, token_lists, values, examined = _Skips(), [], [], {n: [] for n, _ in wanted}, 0
    lines_kept = []
    for i in order:
        if len(texts) >= needed:
            break
        examined += 1
        row, line = rows[i], lines[i]
        text = row[col].strip() if col < len(row) else ""
        if not text:
            skips.add("empty sequence cells", line)
            continue
        if molecular:
            too_long = len(text) > MAX_SMILES_CHARS
            text = canonical(text)
            if text is None:
                skips.add(f"SMILES over {MAX_SMILES_CHARS:,} characters" if too_long else "unparseable SMILES", line)
                continue
        try:
            tokens = tok.split(text)
        except ValueError:
            skips.add(f"strings the {kind} tokeniser cannot read", line)
            continue
        if not tokens:
            skips.add("empty sequences", line)
            continue
        if max_length is not None and len(tokens) > max_length:
            skips.add(f"longer than --max-length {max_length}", line)
            continue
        row_values, bad = {}, None
        for n, k in wanted:
            if n not in header:
                continue  # computed from the molecule below
            cell = row[header.index(n)].strip() if header.index(n) < len(row) else ""
            if not cell:
                bad = f"no value for condition {n}"
                break
            if k == "continuous":
                try:
                    v = float(cell)
                except ValueError:
                    bad = f"non-numeric {n} values"
                    break
                if not math.isfinite(v):
                    bad = f"non-finite {n} values"
                    break
                row_values[n] = v
            else:
                try:  # a kind to be inferred: "nan" or "inf" is no value, skipped as an empty cell is
                    if not math.isfinite(float(cell)):
                        bad = f"non-finite {n} values"
                        break
                except ValueError:
                    pass
                row_values[n] = cell
        if bad:
            skips.add(bad, line)
            continue
        texts.append(text)
        token_lists.append(tokens)
        lines_kept.append(line)
        for n in row_values:
            values[n].append(row_values[n])
    if max_length is None and token_lists:
        # the default length: the longest row, unless a few rows are far longer than the rest (one row of
        # 20,000 words made every batch 20,000 tokens long, and training seemed to hang)
        lengths = np.array([len(t) for t in token_lists])
        cap = max(DEFAULT_LENGTH_FACTOR * int(np.percentile(lengths, 90)), DEFAULT_LENGTH_FLOOR)
        if lengths.max() > cap:
            keep = lengths <= cap
            for j in np.flatnonzero(~keep):
                skips.add(f"longer than {cap} tokens (the default length: {DEFAULT_LENGTH_FACTOR}x the 90th percentile "
                          f"of the rows' lengths, at least {DEFAULT_LENGTH_FLOOR}; --max-length N keeps rows up to N "
                          "tokens)", lines_kept[j])
            texts = [t for t, k in zip(texts, keep) if k]
            token_lists = [t for t, k in zip(token_lists, keep) if k]
            values = {n: [v for v, k in zip(vals, keep) if k] for n, vals in values.items()}
    if skips.total and not quiet:
        print(skips.message(str(source), examined), file=sys.stderr)
    if not texts:
        raise CvaeError(f"no usable rows in {source} (every row was skipped: {skips.message(str(source), examined)})")
    computed = [n for n, _ in wanted if n not in header]
    if computed:
        from ..chem import properties

        table = properties(texts, computed)
        for j, n in enumerate(computed):
            values[n] = table[:, j].tolist()
            wanted_kind[n] = wanted_kind[n] or "continuous"

    tok = Tokenizer.fit(kind, token_lists)
    longest = max(len(t) for t in token_lists)
    length = (max_length or longest) + 1  # room for <eos>
    ids = _encode_tokens(tok, token_lists, length)

    n = len(texts)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    if limit is not None and val_fraction > 0:
        n_val = max(n_val, n - limit)  # --limit N trains on N, not N + 1 where the rounding fell the other way
    cols = {}
    for nm, _ in wanted:
        vals = values[nm]
        cols[nm] = np.asarray(vals, np.float64) if wanted_kind[nm] == "continuous" or nm in computed \
            else _numeric_or_text(vals)
    spec = ",".join(f"{nm}:{wanted_kind[nm]}" if wanted_kind[nm] else nm for nm, _ in wanted) or "none"
    parts = {"val": slice(0, n_val), "train": slice(n_val, n)}
    raw = RawData(name=name, kind="sequence",
                  splits={s: (np.empty(len(range(n)[sl])), {k: v[sl] for k, v in cols.items()}) for s, sl in parts.items()})
    if n - n_val < 1:
        raise CvaeError(f"no training examples left in {source!r} (after the validation split)")
    schema, codes = build_schema(raw, spec, str(source))

    def dataset(split):
        sl = parts[split]
        if sl.stop - sl.start == 0:
            return None
        return Dataset(torch.from_numpy(ids[sl].astype(np.float32)), torch.from_numpy(codes[split].astype(np.float32)),
                       ids=None)

    meta = {
        "model": {**SEQUENCE_MODEL, "tokenizer": tok.to_dict()},
        "sequences": {"column": sequence, "tokenizer": kind, "max_length": length - 1, "vocabulary": len(tok),
                      "rows_examined": examined, "rows_skipped": skips.total, "skipped": skips.summary(),
                      "computed_conditions": computed},
        "strings": {"val": texts[:n_val], "train": texts[n_val:]},
    }
    return DataSplits(name=name, kind="sequence", schema=schema, train=dataset("train"), val=dataset("val"), test=None,
                      meta=meta)


def _encode_tokens(tok: Tokenizer, token_lists: list[list[str]], length: int) -> np.ndarray:
    """Ids of already-split token lists (SELFIES: no second conversion)."""
    from ..tokens import EOS, PAD

    out = np.full((len(token_lists), length), PAD, np.int64)
    for i, tokens in enumerate(token_lists):
        out[i, :len(tokens)] = [tok.index[t] for t in tokens]
        out[i, len(tokens)] = EOS
    return out


def _numeric_or_text(vals: list) -> np.ndarray:
    try:
        return np.asarray([float(v) for v in vals], np.float64)
    except (TypeError, ValueError):
        return np.asarray(vals, dtype=object)
