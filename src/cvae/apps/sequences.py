"""Applications of a sequence model (``--sequence`` runs): molecules and sentences for requested
conditions, written with what they achieved; interpolation between two sequences; transfer of a
sequence to another condition; pictures (an RDKit grid of molecules, or sentences per condition)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..errors import CvaeError, quoted
from ..models.seqvae import GENERATE_DECODE, GENERATE_TOKEN_TEMPERATURE

TEXT_SUFFIXES = (".csv", ".smi", ".txt")


def is_sequence_model(model) -> bool:
    return hasattr(model, "sample_strings")


def _column(model) -> str:
    return "smiles" if model.tokenizer.molecular else "text"


def described(model, y: torch.Tensor | None) -> list[dict]:
    """Raw condition rows as {name: value} (class names for categorical conditions)."""
    if y is None:
        return []
    rows = []
    for r in y.tolist():
        row = {}
        for a, v in zip(model.schema.attributes, r):
            row[a.name] = a.classes[int(v)] if a.kind == "categorical" else round(float(v), 4)
        rows.append(row)
    return rows


def achieved_table(model, strings: list[str]) -> tuple[list[str | None], dict[str, np.ndarray]]:
    """For molecules: canonical SMILES (None when invalid) and the achieved value of every condition
    RDKit computes."""
    if not model.tokenizer.molecular:
        return list(strings), {}
    from ..chem import canonical, properties
    from ..seqmetrics import computable

    canon = [canonical(s) if s else None for s in strings]
    names = computable(model)
    table = properties(canon, names) if names else np.zeros((len(canon), 0))
    return canon, {n: table[:, j] for j, n in enumerate(names)}


# --within: rounds of n molecules at most; a round's seed is the user's plus this times its number
WITHIN_ROUNDS = 50
ROUND_SEED_STEP = 1_000_003


def parse_within(model, text: str | dict) -> dict[str, float]:
    """``--within logp=0.3,qed=0.05``: per property that RDKit computes, the largest distance from the
    request that a kept molecule may have."""
    from ..conditions import parse_assignments
    from ..seqmetrics import computable

    names = computable(model)
    if not names:
        raise CvaeError("--within keeps molecules whose RDKit-computed properties are near the request; this run has "
                        "no such condition (it is for molecule runs conditioned on e.g. logp or qed); leave it out")
    spec = parse_assignments(text) if isinstance(text, str) else dict(text)
    if not spec:
        raise CvaeError(f"--within needs NAME=DISTANCE, e.g. --within {names[0]}=0.3")
    out = {}
    for name, value in spec.items():
        if name not in names:
            raise CvaeError(f"--within {name}: not a property of this run that RDKit computes; use one of "
                            f"{', '.join(names)}")
        try:
            tol = float(value)
        except (TypeError, ValueError):
            tol = float("nan")
        if not (np.isfinite(tol) and tol > 0):
            raise CvaeError(f"--within {name}={value}: the distance must be a number above 0")
        out[name] = tol
    return out


def _generate(model, n: int, condition, within: dict[str, float] | None, *, seed: int, **decoding):
    """``n`` strings with their raw conditions, canonical forms and achieved properties; with ``within``,
    the molecules of rounds of ``n`` (new seeds) whose achieved properties lie within the distances of
    the request, until ``n`` are kept or WITHIN_ROUNDS rounds are spent. Returns also how many were
    generated."""
    strings, y = model.sample_strings(n, condition, seed=seed, **decoding)
    canon, achieved = achieved_table(model, strings)
    if not within:
        return strings, y, canon, achieved, len(strings)
    parts, kept, generated = [], 0, 0
    for r in range(WITHIN_ROUNDS):
        if r:
            strings, y = model.sample_strings(n, condition, seed=seed + r * ROUND_SEED_STEP, **decoding)
            canon, achieved = achieved_table(model, strings)
        generated += len(strings)
        req = {a.name: y[:, j].numpy() for j, a in enumerate(model.schema.attributes)}
        ok = np.ones(len(strings), bool)
        for name, tol in within.items():
            with np.errstate(invalid="ignore"):
                ok &= np.abs(achieved[name] - req[name]) <= tol  # an invalid molecule's NaN never passes
        idx = np.flatnonzero(ok)[: n - kept]
        parts.append(([strings[i] for i in idx], y[idx], [canon[i] for i in idx], {k: v[idx] for k, v in achieved.items()}))
        kept += len(idx)
        if kept >= n:
            break
    if not kept:
        raise CvaeError(f"none of {generated:,} generated molecules came within --within "
                        + ",".join(f"{k}={v:g}" for k, v in within.items()) + " of the request; widen the distances, "
                        "or ask for values nearer the training data's")
    return ([s for p in parts for s in p[0]], torch.cat([p[1] for p in parts]), [c for p in parts for c in p[2]],
            {k: np.concatenate([p[3][k] for p in parts]) for k in parts[0][3]}, generated)


def sample_to_file(model, out: str | Path, *, n: int = 64, condition=None, seed: int = 0, temperature: float = 1.0,
                   decode: str = GENERATE_DECODE, beam: int = 5,
                   token_temperature: float = GENERATE_TOKEN_TEMPERATURE,
                   guidance: float | None = None, steer: float | None = None,
                   within: dict[str, float] | None = None) -> tuple[Path, dict]:
    """Generate ``n`` sequences and write them: .csv (requested conditions, the sequence, its validity and
    achieved properties), .smi / .txt (one per line) or .png (a picture). Returns the path and a summary.
    ``within`` ({property: distance}, see :func:`parse_within`) keeps only molecules whose RDKit-computed
    properties are that near the request, generating more until ``n`` are kept (the summary says how
    many were generated; fewer than ``n`` when WITHIN_ROUNDS rounds did not find them)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in TEXT_SUFFIXES + (".png",):
        raise CvaeError(f"-o {out}: a sequence model writes .csv, .smi, .txt or .png files")
    strings, y, canon, achieved, generated = _generate(
        model, n, condition, within, seed=seed, temperature=temperature, decode=decode, beam=beam,
        token_temperature=token_temperature, guidance=guidance, steer=steer)
    requested = described(model, y)
    molecular = model.tokenizer.molecular
    summary = {"n": len(strings), "generated": generated}
    if molecular:
        valid = [s for s in canon if s]
        summary.update(valid=len(valid) / max(1, len(canon)), unique=len(set(valid)) / max(1, len(valid)))
        for name, vals in achieved.items():
            req = np.array([r[name] for r in requested], float)
            ok = np.isfinite(vals)
            summary[f"{name}_mae"] = float(np.abs(vals[ok] - req[ok]).mean()) if ok.any() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        path = save_sequence_picture(out, model, strings, canon, requested, achieved)
        return path, summary
    shown = [c if c else (s if not molecular else s) for s, c in zip(strings, canon)]
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        if suffix in (".smi", ".txt"):  # one sequence a line: line breaks inside one become spaces, and an
            # empty one (a SELFIES string without an atom decodes to "") is left out, not a blank line that
            # a reader skips, shifting every line after it
            lines = [" ".join(s.splitlines()) for s in shown]
            kept = [s for s in lines if s.strip()]
            summary["left_out_empty"] = len(lines) - len(kept)
            for s in kept:
                f.write(s + "\n")
        else:
            w = csv.writer(f)
            names = [a.name for a in model.schema.attributes] if model.schema else []
            head = [f"{n}_requested" for n in names] + [_column(model)]
            if molecular:
                head += ["valid"] + list(achieved)
            w.writerow(head)
            for i, s in enumerate(shown):
                row = [requested[i][n] for n in names] + [s]
                if molecular:
                    row += [int(canon[i] is not None)] + [("" if not np.isfinite(v[i]) else round(float(v[i]), 4))
                                                          for v in achieved.values()]
                w.writerow(row)
    tmp.replace(out)
    return out, summary


def save_sequence_picture(out: Path, model, strings, canon, requested, achieved, *, most: int = 48) -> Path:
    """Molecules: an RDKit grid, each molecule labelled with its achieved properties. Text: the
    sentences listed under their condition."""
    if model.tokenizer.molecular:
        from rdkit.Chem import Draw

        from ..chem import mol

        mols, legends = [], []
        for i, s in enumerate(canon[:most]):
            if s is None:
                continue
            mols.append(mol(s))
            got = ", ".join(f"{n} {v[i]:.2f}" for n, v in achieved.items())
            legends.append(got)
        if not mols:
            raise CvaeError("none of the generated strings is a valid molecule; nothing to draw")
        img = Draw.MolsToGridImage(mols, molsPerRow=min(8, len(mols)), subImgSize=(200, 170), legends=legends)
        img.save(str(out))
        return out
    from ..plots import _plt, _save

    plt = _plt()
    groups: dict[str, list[str]] = {}
    for i, s in enumerate(strings[:most]):
        key = ", ".join(f"{k}={v}" for k, v in requested[i].items()) if requested else "samples"
        groups.setdefault(key, []).append(s)
    lines = []
    for key, items in groups.items():
        lines.append((key, True))
        lines += [(("  " + t)[:110], False) for t in items[:8]]
    fig, ax = plt.subplots(figsize=(9, 0.24 * len(lines) + 0.6))
    ax.axis("off")
    for i, (text, bold) in enumerate(lines):
        ax.text(0.0, 1 - (i + 0.5) / len(lines), text, fontsize=8, family="monospace",
                weight="bold" if bold else "normal", va="center", transform=ax.transAxes)
    ax.set_title("generated sentences per condition", fontsize=10)
    return _save(fig, out)


def interpolate_strings(model, start: str, end: str, *, steps: int = 10, condition=None,
                        start_condition=None, end_condition=None, steer: float | None = None) -> list[str]:
    """Decode (greedily) the straight line between the posterior means of two sequences, steered
    towards the path's conditions with weight ``steer`` (None: the run's). Without conditions, a molecule
    run whose conditions RDKit computes takes each end's own, and the path goes from one to the other."""
    if steps < 2:
        raise CvaeError(f"--steps must be at least 2 (the two ends), got {steps}")
    texts = [_canonical_input(model, start), _canonical_input(model, end)]
    if model.schema:
        y = model.schema.parse(condition, 1) if condition else None
        ya = model.schema.parse(start_condition or condition, 1) if (start_condition or condition) else y
        yb = model.schema.parse(end_condition or condition, 1) if (end_condition or condition) else y
        if (ya is None or yb is None) and conditions_computable(model):  # each end's own RDKit properties
            ya = given_conditions(model, None, texts[:1], names=["--from"]) if ya is None else ya
            yb = given_conditions(model, None, texts[1:], names=["--to"]) if yb is None else yb
        if ya is None or yb is None:
            a = model.schema.attributes[0]
            example = f"{a.name}={a.classes[0]}" if a.kind == "categorical" else f"{a.name}={a.mean:.3g}"
            raise CvaeError(f"this model is conditioned: give --condition (e.g. {example}) for the path")
        qa = model.encode_strings(texts[:1], ya, where="--from")
        qb = model.encode_strings(texts[1:], yb, where="--to")
        ys = torch.cat([ya + t * (yb - ya) for t in torch.linspace(0, 1, steps)])
        c = model.condition_vector(ys, steps)
    else:
        qa = model.encode_strings(texts[:1], None, where="--from")
        qb = model.encode_strings(texts[1:], None, where="--to")
        c = None
    t = torch.linspace(0, 1, steps, device=model.device).unsqueeze(1)
    z = qa.mu + t * (qb.mu - qa.mu)
    return model.tokenizer.decode(model.decode_tokens(z, c, how="greedy", steer=model.steer_weight(steer)).cpu().numpy())


def transfer_strings(model, texts: list[str], own, targets: list[str], *, decode: str = "greedy",
                     names: list[str] | None = None, steer: float | None = None) -> list[dict]:
    """Encode each text with its own condition ``own`` (a spec such as ``sentiment=neg``, or raw rows
    from :func:`given_conditions`), decode the posterior mean with each target condition
    (``label=all``, ``all`` or no target: every class, as for images), steered towards it with weight
    ``steer`` (None: the run's). ``names`` say where each text came from in errors ("line 7"; "row i"
    by default)."""
    from .latent import transfer_targets

    names = list(names) if names is not None else [f"row {i}" for i in range(len(texts))]
    texts = canonical_inputs(model, texts, names, "--input")
    y_own = own if isinstance(own, torch.Tensor) else model.schema.parse(own, len(texts))
    q = model.encode_strings(texts, y_own, where="--input", names=names)
    steer = model.steer_weight(steer)
    rows = []
    for target in transfer_targets(model, targets):
        y_t = model.schema.parse(target, len(texts))
        c = model.condition_vector(y_t, len(texts))
        out = model.tokenizer.decode(model.decode_tokens(q.mu, c, how=decode, steer=steer).cpu().numpy())
        label = ",".join(f"{k}={v}" for k, v in target.items())
        rows += [{"input": s, "target": label, "output": o} for s, o in zip(texts, out)]
    return rows


def lines_of(text: str, *, first_field: bool = False, what: str = "the file") -> tuple[list[str], list[str]]:
    """The sequences of a text, one a line (``first_field``: the line's first field, as in a .smi file,
    where a name may follow the SMILES), blank lines skipped: where each came from ("line 7") and the
    strings."""
    numbered = [(f"line {k}", line.split()[0] if first_field else line.strip())
                for k, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise CvaeError(f"{what} holds no sequences (every line is blank)")
    return [n for n, _ in numbered], [t for _, t in numbered]


def sequence_column(model) -> str | None:
    """The column of a table that a sequence run was trained on (``smiles``, ``text``)."""
    return (model.run_config.get("data", {}).get("sequences") or {}).get("column")


TABLE_INPUTS = (".csv", ".tsv")  # inputs of a sequence run read as tables (by its sequence column)


def input_table(spec):
    """The header and rows of a CSV/TSV file given to a sequence run; None for anything else."""
    path = Path(str(spec)) if spec is not None else None
    if path is None or path.suffix.lower() not in TABLE_INPUTS or not path.is_file():
        return None
    from ..data.sources import read_csv_table

    return read_csv_table(path)


def table_cells(table, names: list[str], columns) -> dict[str, list[str]]:
    """The cells of ``columns`` in the rows :func:`read_strings` kept from ``table`` (``names``: their
    "line N"), in that order."""
    header, rows = table
    by_line = {f"line {line}": r for line, r in zip(rows.lines, rows)}
    return {c: [by_line[n][header.index(c)].strip() for n in names] for c in columns}


def read_strings(spec: str, flag: str, column: str | None = None) -> tuple[list[str], list[str]]:
    """The sequences a user gives with ``flag``: a .txt file (one per line), a .smi file (the first field
    of each line: SMILES files often name the molecule after it), a CSV/TSV table's ``column`` (the run's
    sequence column) or the string itself. Returns where each came from ("line 7", for errors) and the
    strings; blank lines and empty cells are skipped."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".txt", ".smi") and path.is_file():
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise CvaeError(f"{flag} {spec}: the file is not UTF-8 text; save it as UTF-8, one sequence per line") from None
        return lines_of(text, first_field=suffix == ".smi", what=f"{flag} {spec}")
    table = input_table(path)
    if table is not None:  # a table: its sequence column, not its file name
        header, rows = table
        if column is None or column not in header:
            raise CvaeError(f"{flag} {spec}: " + (f"the table has no column {column!r} (the run's sequences); its "
                                                 f"columns are: {', '.join(header)}" if column else
                                                 "give a .txt or .smi file, one sequence per line"))
        j = header.index(column)
        kept = [(f"line {line}", r[j].strip()) for line, r in zip(rows.lines, rows) if r[j].strip()]
        if not kept:
            raise CvaeError(f"{flag} {spec}: the column {column!r} holds no sequences")
        return [n for n, _ in kept], [t for _, t in kept]
    if suffix in (".txt", ".smi", *TABLE_INPUTS) and not path.is_file():
        raise CvaeError(f"{flag} {spec}: no such file; give a .txt or .smi file (one sequence per line), a CSV with "
                        "the run's sequence column, or the sequence itself in quotes")
    if not spec.strip():
        raise CvaeError(f"{flag} is empty; give a sequence in quotes, or a .txt/.smi file with one per line")
    return ["the string"], [spec]


def conditions_computable(model) -> bool:
    """Whether every condition of the run is a molecular property RDKit computes (logp, qed, ...): then
    a given molecule's own condition can be computed instead of asked for."""
    from ..seqmetrics import computable

    return bool(model.schema) and len(computable(model)) == len(model.schema.attributes)


def table_conditions(model, spec, names: list[str]):
    """The condition cells of the rows :func:`read_strings` kept from a CSV/TSV table (``names``: their
    "line N"), as a mapping for ``schema.parse``; None when ``spec`` is not such a table or lacks one of
    the run's condition columns."""
    table = input_table(spec) if model.schema else None
    if table is None or not all(a in table[0] for a in model.schema.names):
        return None
    return table_cells(table, names, model.schema.names)


def table_labels(model, spec, names: list[str]):
    """Raw condition rows (N, A) of a CSV's categorical condition columns for the kept rows ``names``, NaN
    where a cell is empty or the column is continuous (the labels classify scores against); None when
    ``spec`` is not a table with the run's condition columns. A label the run does not know is an error."""
    own = table_conditions(model, spec, names)
    if own is None:
        return None
    y = torch.full((len(names), len(model.schema.attributes)), float("nan"))
    for j, a in enumerate(model.schema.attributes):
        if a.kind != "categorical":
            continue
        for i, v in enumerate(own[a.name]):
            try:
                y[i, j] = a.code(v, missing_ok=True)
            except CvaeError as e:
                raise CvaeError(f"{spec}, {names[i]}: {e}") from None
    return y


def given_conditions(model, condition, texts: list[str], flag: str = "--condition", *, names: list[str] | None = None,
                     source=None):
    """Raw condition rows of given sequences: ``condition`` for each; without it, the condition columns
    of ``source`` when it is a CSV table that has them, else for a molecule run whose conditions RDKit
    computes (logp, qed, ...) each molecule's own properties (None for a plain VAE; any other
    conditioned run needs ``condition``, since a string carries none of its own). ``names`` say where
    each came from ("line 7") in messages."""
    if not model.schema:
        if condition:
            raise CvaeError(f"{flag}: this run has no condition; leave it out")
        return None
    if condition:
        return model.schema.parse(condition, len(texts))
    own = table_conditions(model, source, names) if names is not None else None
    if own is not None:
        try:
            return model.schema.parse(own, len(texts))
        except CvaeError as e:
            for i, name in enumerate(names):  # the first line whose cells are wrong, named
                try:
                    model.schema.parse({a: [v[i]] for a, v in own.items()}, 1)
                except CvaeError as row_error:
                    raise CvaeError(f"{source}, {name}: {row_error}") from None
            raise CvaeError(f"{source}: {e}") from None
    if conditions_computable(model):
        from ..chem import canonical, not_a_molecule, properties

        props = model.schema.names
        own = properties([canonical(t) for t in texts], props)
        bad = np.flatnonzero(~np.isfinite(own).all(1))
        if len(bad):
            where = f"{names[bad[0]]}: " if names else ""
            raise CvaeError(f"{where}{quoted(texts[bad[0]])} {not_a_molecule(texts[bad[0]])}, so its "
                            f"{', '.join(props)} cannot be computed; fix it, or give {flag}")
        return torch.as_tensor(own, dtype=torch.float32)
    raise CvaeError(f"this model is conditioned on {', '.join(model.schema.names)}: give the sequences' own condition "
                    f"with {flag} (e.g. {model.schema.attributes[0].name}=...)")


def own_strings(model, n: int | None = None) -> tuple[list[str], torch.Tensor | None, torch.Tensor]:
    """The run's own validation sequences (its training ones where it kept none), the first ``n``: the
    strings, their raw conditions and their token ids."""
    from ..evaluate import load_run_data

    data = load_run_data(model)
    split = "val" if data.val is not None else "train"
    part = getattr(data, split)
    texts = data.meta["strings"][split][:n]
    return texts, (part.y[:len(texts)] if model.schema else None), part.x[:len(texts)]


def reconstruct_strings(model, texts: list[str], y=None, *, names: list[str] | None = None,
                        steer: float | None = None) -> list[dict]:
    """Each sequence encoded with its own condition ``y`` and its posterior mean decoded greedily with
    it (steered with ``steer``; None: the run's weight): rows ``input, conditions..., reconstruction,
    same`` (for molecules the canonical SMILES are compared, with the reconstruction's validity)."""
    names = list(names) if names is not None else [f"row {i}" for i in range(len(texts))]
    texts = canonical_inputs(model, texts, names, "--input")
    steer = model.steer_weight(steer)
    conds = described(model, y) if y is not None else [{}] * len(texts)
    out = []
    for i in range(0, len(texts), 1000):
        yb = y[i:i + 1000] if y is not None else None
        q = model.encode_strings(texts[i:i + 1000], yb, where="--input", names=names[i:i + 1000])
        c = model.condition_vector(yb, len(q.mu)) if yb is not None else None
        out += model.tokenizer.decode(model.decode_tokens(q.mu, c, how="greedy", steer=steer).cpu().numpy())
    canon, _ = achieved_table(model, out)
    # text is compared as the tokeniser reads it (the word tokeniser lower-cases and spaces punctuation:
    # "Hello, World." comes back as "hello , world .", the same tokens)
    read = texts if model.tokenizer.molecular else model.tokenizer.decode(
        model.tokenizer.encode(texts, model.length, where="--input", names=names))
    rows = []
    for k, (t, o) in enumerate(zip(texts, out)):
        row = {"input": t, **conds[k], "reconstruction": canon[k] if model.tokenizer.molecular and canon[k] else o}
        if model.tokenizer.molecular:
            row["valid"] = int(canon[k] is not None)
        row["same"] = int(row["reconstruction"] == read[k])
        rows.append(row)
    return rows


def traversal_rows(model, result) -> list[dict]:
    """The strings of a :class:`~cvae.apps.latent.Traversal` (token ids decoded) as rows ``dimension,
    kl, base, value_sd, sequence`` (molecules: with validity and the properties RDKit computes)."""
    k, b, s = result.x.shape[:3]
    strings = model.tokenizer.decode(result.x.reshape(k * b * s, -1).long().cpu().numpy())
    canon, achieved = achieved_table(model, strings)
    rows = []
    for i, d in enumerate(result.dims):
        for j in range(b):
            for t in range(s):
                r = (i * b + j) * s + t
                row = {"dimension": d, "kl": round(float(result.kl[d]), 4),
                       "base": result.base_labels[j] if j < len(result.base_labels) else j,
                       "value_sd": round(float(result.values[t]), 4), _column(model): strings[r]}
                if model.tokenizer.molecular:
                    row[_column(model)] = canon[r] or strings[r]
                    row["valid"] = int(canon[r] is not None)
                    row.update({name: "" if not np.isfinite(v[r]) else round(float(v[r]), 4)
                                for name, v in achieved.items()})
                rows.append(row)
    return rows


def embed_strings(model, texts: list[str], y=None, *, batch_size: int = 1000,
                  names: list[str] | None = None) -> list[dict]:
    """Rows ``sequence, conditions..., mu_0.., var_0..`` of the posterior q(z | x, c) of each string.
    ``names`` say where each text came from in errors ("line 7"; "row i" by default)."""
    names = list(names) if names is not None else [f"row {i}" for i in range(len(texts))]
    texts = canonical_inputs(model, texts, names, "--data")
    rows = []
    conds = described(model, y) if y is not None else [{}] * len(texts)
    for i in range(0, len(texts), batch_size):
        q = model.encode_strings(texts[i:i + batch_size], y[i:i + batch_size] if y is not None else None,
                                 where="--data", names=names[i:i + batch_size])
        mu, var = q.mu.cpu().numpy(), q.variance.cpu().numpy()
        for j, t in enumerate(texts[i:i + batch_size]):
            rows.append({_column(model): t, **conds[i + j], **{f"mu_{d}": float(v) for d, v in enumerate(mu[j])},
                         **{f"var_{d}": float(v) for d, v in enumerate(var[j])}})
    return rows


def canonical_inputs(model, texts: list[str], names: list[str], flag: str) -> list[str]:
    """Given molecules in the canonical SMILES the run was trained on (an unparseable one is an error
    that names it: "--data, line 7: ..."); text unchanged."""
    return [_canonical_input(model, t, f"{flag}, {n}: ") for t, n in zip(texts, names)]


def token_ids(model, texts: list[str], names: list[str], flag: str) -> tuple[list[str], torch.Tensor]:
    """Given sequences as the model reads them: canonical (molecules, :func:`canonical_inputs`) and
    tokenised with the run's vocabulary into float ids (N, length + 1); an unseen token or a sequence
    too long is an error that names it ("--data, line 7")."""
    texts = canonical_inputs(model, texts, names, flag)
    return texts, torch.as_tensor(model.tokenizer.encode(texts, model.length, where=flag, names=names)).float()


def _canonical_input(model, text: str, where: str = "") -> str:
    if not model.tokenizer.molecular:
        return text
    from ..chem import canonical, not_a_molecule

    c = canonical(text)
    if c is None:
        raise CvaeError(f"{where}{quoted(text)} {not_a_molecule(text)}")
    return c


def write_rows(out: str | Path, rows: list[dict]) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise CvaeError(f"-o {out}: write a .csv file")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out
