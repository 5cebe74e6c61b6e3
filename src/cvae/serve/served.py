"""One trained run as the web page and the JSON API see it: what it is (conditions, latent
dimensions by KL, detector, pictures, metrics) and what it does, each operation a call to the same
``cvae.apps`` function the command line uses, its result turned into JSON (PNG grids for images,
numbers for tables and signals).

Nothing here imports the web stack: :mod:`cvae.serve.app` puts these methods behind HTTP.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..apps import (
    conditions_of,
    decode_at,
    embed_inputs,
    generate,
    kl_per_dimension,
    load_detector,
    read_inputs,
    reconstruct_inputs,
    score_anomalies,
    transfer,
    traverse,
)
from ..apps.anomaly import DETECTOR_FILE
from ..apps.sequences import conditions_computable
from ..errors import CvaeError
from ..plots import image_grid
from ..runs import load_model, read_metrics

KL_EXAMPLES = 1000  # examples of the run's own data that the KL per dimension is averaged over
SLIDERS = 6  # latent sliders on the page: the dimensions with the most KL


class UploadError(CvaeError):
    """An upload of a type this run cannot read (answered 415, not 422)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: the bounds that keep a shared server's memory and time in check."""

    max_n: int = 64  # examples generated per request
    max_rows: int = 64  # rows of an upload that are read
    max_upload_bytes: int = 5 * 2**20  # an uploaded file
    max_decoded_bytes: int = 64 * 2**20  # the arrays of an uploaded .npz once decompressed
    max_pixels: int = 4096 * 4096  # an uploaded image once decoded
    max_targets: int = 32  # transfer targets per request


# Uploads are recognised by their first bytes, never by a name the client gives.
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"\x93NUMPY", ".npy"), (b"PK\x03\x04", ".npz"))


def upload_suffix(data: bytes) -> str:
    """The file type of an upload from its content: .png, .jpg, .npy, .npz or .csv (UTF-8 text)."""
    if not data:
        raise UploadError("the uploaded file is empty")
    for magic, suffix in SIGNATURES:
        if data.startswith(magic):
            return suffix
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadError("the upload is neither a PNG or JPEG image, a .npy/.npz array nor a UTF-8 CSV file; "
                          "upload one of those") from None
    if "\x00" in text:
        raise UploadError("the upload is binary data of an unknown type; upload a PNG/JPEG image, .npy/.npz or CSV")
    return ".csv"


def png_bytes(grid: np.ndarray) -> bytes:
    """A (H, W) grey or (H, W, 3) RGB array in [0, 1] as PNG bytes (the same array, the same bytes)."""
    from PIL import Image

    a = np.clip(np.round(np.asarray(grid, np.float64) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _numbers(a) -> list:
    """An array as nested lists of floats rounded to float32's precision (7 significant digits)."""
    a = np.asarray(a, np.float64)
    return np.array([float(f"{v:.7g}") for v in a.ravel().tolist()]).reshape(a.shape).tolist()


def _finite(x: torch.Tensor, what: str = "outputs") -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        raise CvaeError(f"the model's {what} hold NaN or infinite values; give conditions near the training "
                        "data's range (or the run's weights may be damaged: train it again)")
    return x


class ServedRun:
    """A run folder named when the server started, loaded once, with its facts computed once."""

    def __init__(self, name: str, run: str | Path, *, device: str = "cpu", limits: Limits | None = None):
        self.name = name
        self.dir = Path(run)
        self.limits = limits or Limits()
        self.model = load_model(self.dir, device=device)
        if self.model.run_config.get("data", {}).get("kind") == "interactions":  # Mult-VAE: item vectors, not data
            raise CvaeError(f"{self.dir} is a recommender run: cvae serve does not serve recommendations; use `cvae "
                            f"recommend {self.dir} --user-history FILE -o recs.csv` or cvae.recommend.recommend in Python")
        self.model.eval()
        self.model.sampling_codes()  # a damaged or foreign fit of the codes: refused at start, in one line
        data = self.model.run_config.get("data", {})
        shape = tuple(self.model.config.data_shape)
        self.kind = data.get("kind") or ("image" if len(shape) == 3 else "signal" if len(shape) == 2 else "table")
        self.features = list(data.get("features") or [])
        self.detector = load_detector(self.dir) if (self.dir / DETECTOR_FILE).is_file() else None
        self.pictures = {p.name: p for p in sorted(self.dir.glob("*.png"))}
        self.kl, self.kl_note = self._kl()

    # -- facts --------------------------------------------------------------------------------
    def _kl(self) -> tuple[torch.Tensor | None, str]:
        """KL per latent dimension on up to KL_EXAMPLES examples of the run's own data (the order of
        the sliders); None with the reason when the data cannot be read here."""
        from ..data.core import recorded_source

        try:  # a run whose data has moved is still served, its sliders in their own order
            source = recorded_source(self.model.run_config)
        except CvaeError as e:
            return None, f"{e}; dimensions are in their own order"
        if not source:
            return None, "the run does not record its data"
        try:
            if self.kind == "sequence":  # the run's own sequences, read as cvae traverse reads them
                from ..apps.sequences import own_strings

                _, y, x = own_strings(self.model, KL_EXAMPLES)
            else:
                inputs = read_inputs(self.model, source, n=KL_EXAMPLES)
                x, y = inputs.x, conditions_of(self.model, inputs, None, source=source)
            kl = kl_per_dimension(self.model, x, y)
        except CvaeError as e:
            return None, f"the run's data could not be read ({e}); dimensions are in their own order"
        return kl, f"averaged over {len(x)} examples of {Path(str(source)).name}"

    def conditions(self) -> list[dict]:
        out = []
        for a in self.model.schema.attributes if self.model.schema else []:
            if a.kind == "categorical":
                out.append({"name": a.name, "kind": a.kind, "classes": list(a.classes)})
            else:
                out.append({"name": a.name, "kind": a.kind, "mean": a.mean, "std": a.std,
                            "min": a.mean - 3 * a.std, "max": a.mean + 3 * a.std})
        return out

    def top_dims(self) -> list[int]:
        d = self.model.config.latent_dim
        if self.kl is None:
            return list(range(min(SLIDERS, d)))
        return torch.argsort(self.kl, descending=True)[:SLIDERS].tolist()

    def metrics(self) -> dict:
        """What the run folder says about itself: its summary, its evaluation, its last epoch."""
        out: dict = {}
        for name in ("summary.json", "eval.json"):
            path = self.dir / name
            if path.is_file():
                try:
                    out[name.removesuffix(".json")] = json.loads(path.read_text())
                except json.JSONDecodeError:
                    out[name.removesuffix(".json")] = {"error": f"{name} is damaged"}
        rows = read_metrics(self.dir / "metrics.jsonl") if (self.dir / "metrics.jsonl").is_file() else []
        if rows:
            out["last_epoch"] = rows[-1]
        return out

    def info(self) -> dict:
        d = self.detector
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.model.name,
            "data": self.model.run_config.get("data", {}).get("name"),
            "data_shape": list(self.model.config.data_shape),
            "features": self.features,
            "latent_dim": self.model.config.latent_dim,
            "conditions": self.conditions(),
            # classifier-free guidance: the run's weight, and whether its decoder can be guided at all
            "guidance": {"available": bool(self.model.flagged),
                         "default": float(self.model.config.guidance)},
            # where generated codes come from (the fitted aggregate posterior, or the prior) and the
            # temperature cvae sample uses for them by default
            "codes": {"default": self.model.sampling_codes(), "temperature": float(self.model.sampling_temperature())},
            # sequence runs trained with --steer: the prefix predictor's steering weight
            "steer": {"available": bool(getattr(self.model.config, "prefix_predictor", False)),
                      "default": float(getattr(self.model.config, "steer", 0.0))},
            # a molecule run whose every condition RDKit computes: an upload's own condition may be left out
            "conditions_computed": conditions_computable(self.model),
            "kl_per_dimension": None if self.kl is None else _numbers(self.kl),
            "kl_note": self.kl_note,
            "sliders": self.top_dims(),
            # the categorical conditions an upload can be classified by (cvae classify), first the default
            "classifies": self.model.classifies(),
            "detector": None if d is None else {"score": d.score, "threshold": d.threshold, "fpr": d.fpr,
                                                "label_column": d.label_column, "normal": d.normal},
            "pictures": list(self.pictures),
            "metrics": self.metrics(),
            "limits": {"max_n": self.limits.max_n, "max_rows": self.limits.max_rows,
                       "max_upload_bytes": self.limits.max_upload_bytes},
        }


    # -- rendering ----------------------------------------------------------------------------
    def _describe(self, y) -> list[str]:
        if y is None or not self.model.schema:
            return []
        return [self.model.schema.describe(row) for row in y]

    def _warnings(self, *ys) -> list[str]:
        """What the CLI warns of on its standard error: continuous conditions far outside the training range."""
        if not self.model.schema:
            return []
        return list(dict.fromkeys(w for y in ys if y is not None for w in self.model.schema.extrapolated(y)))

    def _conditions(self, y, *more) -> dict:
        """An answer's ``conditions`` (those of ``y``, one per example) and its ``warnings`` (of ``y`` and
        ``more``: a transfer's targets)."""
        return {"conditions": self._describe(y), "warnings": self._warnings(y, *more)}

    def render(self, x: torch.Tensor, ncol: int | None = None) -> dict:
        """Examples (N, *data_shape) as the page draws them: a PNG grid for images (``ncol`` a row),
        numbers for signals (N, C, L) and table rows (N, F) with the feature names."""
        x = _finite(x.detach().cpu().float())
        if self.kind == "sequence":
            return self.strings(self.model.tokenizer.decode(x.long().numpy()))
        n = len(x)
        if self.kind == "image" and x.ndim == 4:
            ncol = ncol or min(8, n)
            return {"kind": "image", "n": n, "ncol": ncol, "shape": list(x.shape[1:]),
                    "png": base64.b64encode(png_bytes(image_grid(x, ncol))).decode("ascii")}
        if x.ndim == 3:
            return {"kind": "signal", "n": n, "shape": list(x.shape[1:]), "values": _numbers(x)}
        names = self.features if len(self.features) == x.shape[1] else [f"x{i}" for i in range(x.shape[1])]
        x = x.reshape(n, -1)
        whole = set(self.model.run_config.get("data", {}).get("whole_features") or [])
        cols = [j for j, name in enumerate(names) if name in whole]
        if cols:  # whole-number columns (counts, ages) as the CSV outputs write them
            x[:, cols] = x[:, cols].round()
        return {"kind": "table", "n": n, "features": names, "values": _numbers(x)}

    def strings(self, strings: list[str]) -> dict:
        """Sequences as the page shows them: the strings; for molecules the canonical SMILES (the raw
        string when invalid), whether each is valid and its RDKit-computed properties (None: invalid)."""
        from ..apps.sequences import achieved_table

        out = {"kind": "sequence", "n": len(strings), "strings": list(strings)}
        if self.model.tokenizer.molecular:
            canon, achieved = achieved_table(self.model, strings)
            out.update(strings=[c or s for s, c in zip(strings, canon)], valid=[c is not None for c in canon],
                       achieved={k: [float(v) if np.isfinite(v) else None for v in vals] for k, vals in achieved.items()})
        return out

    # -- operations (each the apps function the CLI calls) -------------------------------------
    def generate(self, *, condition=None, n: int = 16, seed: int = 0, temperature: float | None = None,
                 draw: bool = False, guidance: float | None = None,
                 steer: float | None = None) -> tuple[dict, torch.Tensor | None]:
        """``cvae sample``: n examples for the condition; the same seed, the same examples; classifier-free
        ``guidance`` (None: the run's weight); a sequence run samples each token at the default token
        temperature (``draw``: at 1, the model's own distribution) and is steered with ``steer`` (None: the run's weight).
        ``temperature`` None: cvae sample's default for the run (0.9 for the prior, 1 for a fitted aggregate posterior)."""
        self._check_count(n, self.limits.max_n, "n")
        guidance = self.model.guidance_weight(guidance)
        temperature = self.model.sampling_temperature(temperature)
        if self.kind == "sequence":
            steer = self.model.steer_weight(steer)
            strings, y = self.model.sample_strings(n, condition or None, seed=seed, temperature=temperature,
                                                   guidance=guidance, steer=steer,
                                                   **({"token_temperature": 1.0} if draw else {}))
            return {**self.strings(strings), **self._conditions(y), "seed": seed,
                    "temperature": temperature, "guidance": guidance,
                    "steer": steer}, None
        if steer is not None:
            raise CvaeError("steer is for sequence runs trained with --steer; leave it out")
        x, y = generate(self.model, n=n, condition=condition or None, seed=seed, mean=not draw,
                        temperature=temperature, guidance=guidance)
        return {**self.render(x), **self._conditions(y), "seed": seed, "temperature": temperature,
                "guidance": guidance}, x

    def decode(self, *, values: dict[int, float], condition=None) -> dict:
        """The latent sliders: the prior's centre with the given dimensions moved (prior std units)."""
        x = decode_at(self.model, values, condition=condition or None)
        y = self.model.schema.parse(condition or None, 1) if self.model.schema else None
        return {**self.render(x, 1), **self._conditions(y), "latent_sd": {str(k): v for k, v in values.items()}}

    def traverse(self, *, condition=None, dims: list[int] | None = None, top: int = 5, steps: int = 9,
                 low: float = -3.0, high: float = 3.0) -> dict:
        """``cvae traverse``: one latent dimension at a time, highest KL first, from the prior mean."""
        if self.kl is None:
            kl = torch.zeros(self.model.config.latent_dim)
        else:
            kl = self.kl
        result = traverse(self.model, kl=kl, dims=dims, top=top, low=low, high=high, steps=steps,
                          condition=condition or None)
        k, b, s = result.x.shape[:3]
        x = result.x.reshape(k * b * s, *result.x.shape[3:])
        return {**self.render(x, s), "dims": result.dims, "kl": [float(result.kl[d]) for d in result.dims],
                "steps_sd": _numbers(result.values), "row_labels": [f"z{d}" for d in result.dims],
                "base": result.base_labels[0] if result.base_labels else "",
                "warnings": self._warnings(self.model.schema.parse(condition, 1)) if condition and self.model.schema
                else []}

    @contextmanager
    def upload(self, data: bytes, *, read: bool = True):
        """The examples of an uploaded file (at most ``max_rows``) and the file itself, written under a
        name the server chooses in a temporary folder of its own (removed afterwards) and read by the
        readers the CLI uses; their errors name "the upload", not the temporary file."""
        with tempfile.TemporaryDirectory(prefix="cvae-serve-") as tmp:
            try:
                yield self.read_upload(data, tmp, read=read)
            except CvaeError as e:
                text = str(e).replace(str(Path(tmp) / "upload"), "the upload").replace(tmp, "the upload's folder")
                text = re.sub(r"(--data )?the upload\.(png|jpg|npy|npz|csv|txt|smi)", r"the upload (.\2)", text)
                text = text.replace("the image the upload", "the upload").replace("remove or replace it", "upload another")
                raise type(e)(text) from None

    def read_upload(self, data: bytes, directory: str | Path, *, read: bool = True):
        """The file written (its type and decoded size checked) and, with ``read``, its examples (a detector
        reads its own: it knows its label column)."""
        if len(data) > self.limits.max_upload_bytes:
            raise UploadError(f"the upload is {len(data):,} bytes; the limit is {self.limits.max_upload_bytes:,}")
        suffix = self.sequence_suffix(data) if self.kind == "sequence" else upload_suffix(data)
        if suffix in (".png", ".jpg") and self.kind != "image":
            raise UploadError(f"this run models {self.kind} data: upload a CSV file (one example a row, the "
                              f"columns of the training data) or a .npy/.npz array, not an image")
        path = Path(directory) / f"upload{suffix}"
        path.write_bytes(data)
        self._check_expansion(path, suffix)
        if not read:
            return None, path
        inputs = read_inputs(self.model, str(path), n=self.limits.max_rows)
        if len(inputs.x) == 0:
            raise CvaeError("the upload holds no examples")
        return inputs, path

    def upload_strings(self, data: bytes, condition=None) -> tuple[list[str], list[str], torch.Tensor | None]:
        """The sequences of an upload to a sequence run (UTF-8 text, one a line; a molecule's first field
        of each, as in a .smi file; or a CSV with the run's sequence column; at most ``max_rows``): where
        each came from, the strings and their own conditions (``condition``; else a CSV's condition
        columns; for molecules left without them, their RDKit-computed properties)."""
        from ..apps.sequences import given_conditions

        with self.upload_lines(data) as (names, texts, path):
            return names, texts, given_conditions(self.model, condition or None, texts, names=names, source=path)

    def sequence_suffix(self, data: bytes) -> str:
        """How a sequence run reads an upload of text: a CSV whose header names the run's sequence column
        (that column), else one sequence a line (.smi for molecules: a name may follow each)."""
        from ..apps.sequences import sequence_column

        if len(data) > self.limits.max_upload_bytes:
            raise UploadError(f"the upload is {len(data):,} bytes; the limit is {self.limits.max_upload_bytes:,}")
        if upload_suffix(data) != ".csv":
            raise UploadError("this run models sequences: upload a UTF-8 text file with one sequence per line "
                              "(.txt, or .smi for molecules) or a CSV with the run's sequence column, not an image "
                              "or an array")
        first = data.decode("utf-8-sig", "replace").splitlines()[:1]
        column = sequence_column(self.model)
        if first and column and column in [c.strip() for c in next(csv.reader(first))]:
            return ".csv"
        return ".smi" if self.model.tokenizer.molecular else ".txt"

    @contextmanager
    def upload_lines(self, data: bytes):
        """The sequences of an upload to a sequence run, where each came from (``line 3``) and the file
        they were read from (a CSV's other columns are read from it inside the block); errors name "the
        upload", not the temporary file."""
        from ..apps.sequences import read_strings, sequence_column

        suffix = self.sequence_suffix(data)
        with tempfile.TemporaryDirectory(prefix="cvae-serve-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                names, texts = read_strings(str(path), "the upload", sequence_column(self.model))
                yield names[:self.limits.max_rows], texts[:self.limits.max_rows], path
            except CvaeError as e:
                raise CvaeError(str(e).replace(f"the upload {path}", "the upload").replace(str(path), "the upload")) \
                    from None

    def reconstruct(self, data: bytes, *, condition=None) -> dict:
        """``cvae reconstruct``: the inputs encoded and decoded, each with its own condition."""
        if self.kind == "sequence":
            from ..apps.sequences import reconstruct_strings

            names, texts, y = self.upload_strings(data, condition)
            rows = reconstruct_strings(self.model, texts, y, names=names)
            return {"input": self.strings([r["input"] for r in rows]),
                    "reconstruction": self.strings([r["reconstruction"] for r in rows]),
                    "same": [bool(r["same"]) for r in rows], "ids": names, **self._conditions(y)}
        with self.upload(data) as (inputs, _):
            rec, y = reconstruct_inputs(self.model, inputs, condition=condition or None, source="the upload",
                                        own_first=True)  # as encode and transfer: the field is for rows without one
        return {"input": self.render(inputs.x), "reconstruction": self.render(rec), "ids": _ids(inputs.ids),
                **self._conditions(y)}

    def transfer(self, data: bytes, *, condition=None, targets: list[str] | None = None) -> dict:
        """``cvae transfer``: each input decoded with every target condition (default: every class)."""
        if not self.model.schema:
            raise CvaeError("this run is a plain VAE (no condition): there is no condition to transfer to")
        if targets:  # counted before anything is decoded (each target decodes every input)
            self._check_count(len(targets), self.limits.max_targets, "targets")
        if self.kind == "sequence":
            from ..apps.sequences import transfer_strings

            names, texts, y = self.upload_strings(data, condition)
            rows = transfer_strings(self.model, texts, y, targets or None, names=names)
            labels = list(dict.fromkeys(r["target"] for r in rows))
            self._check_count(len(labels), self.limits.max_targets, "targets")
            n = len(texts)  # rows come target by target; the page reads them input by input
            out = [rows[j * n + i]["output"] for i in range(n) for j in range(len(labels))]
            return {**self.strings(out), "inputs": n, "targets": labels, "first_column_is_input": False,
                    "ids": names, "input_strings": [r["input"] for r in rows[:n]],
                    **self._conditions(y)}
        with self.upload(data) as (inputs, _):
            y = conditions_of(self.model, inputs, condition, source="the upload", own_first=True)
            result = transfer(self.model, inputs.x, y, targets or None, ids=inputs.ids)
        n, t = result.x.shape[:2]
        self._check_count(t, self.limits.max_targets, "targets")
        grid = torch.cat([result.inputs[:, None], result.x], dim=1) if self.kind == "image" else result.x
        cols = grid.shape[1]
        out = self.render(grid.reshape(n * cols, *grid.shape[2:]), cols)
        return {**out, "inputs": n, "targets": result.target_labels, "first_column_is_input": self.kind == "image",
                "ids": _ids(result.ids), **self._conditions(result.y_source, result.y_target)}

    def score(self, data: bytes, *, condition=None) -> dict:
        """``cvae anomaly score``: the detector's score of each input against the run's threshold."""
        if self.detector is None:
            raise CvaeError(f"run {self.name!r} is not an anomaly detector (it has no {DETECTOR_FILE}); "
                            "fit one with `cvae anomaly fit`")
        with self.upload(data, read=False) as (_, path):
            result = score_anomalies(self.model, str(path), n=self.limits.max_rows, condition=condition or None)
        out = {"score": result.score, "threshold": result.threshold, "fpr": self.detector.fpr,
               "scores": _numbers(result.scores), "flags": [bool(f) for f in result.flags], "ids": _ids(result.ids)}
        if result.metrics and "auroc" in result.metrics:
            out["auroc"] = result.metrics["auroc"]
        return out

    def encode(self, data: bytes, *, condition=None) -> dict:
        """``cvae embed``: the posterior mean and variance of each input, encoded with its own condition."""
        if self.kind == "sequence":
            from ..apps.sequences import canonical_inputs, described

            names, texts, y = self.upload_strings(data, condition)
            texts = canonical_inputs(self.model, texts, names, "the upload")  # as cvae embed reads molecules
            q = self.model.encode_strings(texts, y, where="the upload", names=names)
            rows = described(self.model, y) if y is not None else []
            return {"ids": names, "strings": texts, "mu": _numbers(_finite(q.mu, "latent codes").cpu()),
                    "var": _numbers(_finite(q.variance, "latent codes").cpu()),
                    "conditions": {name: [r[name] for r in rows] for name in (rows[0] if rows else {})}}
        with self.upload(data) as (inputs, _):
            emb = embed_inputs(self.model, inputs, condition=condition or None, source="the upload")
        if not (np.isfinite(emb.mu).all() and np.isfinite(emb.var).all()):
            raise CvaeError("the model's latent codes hold NaN or infinite values for this upload")
        return {"ids": _ids(emb.ids), "mu": _numbers(emb.mu), "var": _numbers(emb.var),
                "conditions": {k: [v.item() if hasattr(v, "item") else v for v in vals]
                               for k, vals in emb.conditions.items()}}

    def classify(self, data: bytes, *, attribute: str | None = None) -> dict:
        """``cvae classify``: the class probabilities of each input (the first categorical condition, or
        ``attribute``), the predicted class and its probability; with the error against the upload's own
        labels where it has them (a labelled CSV or .npz)."""
        from ..apps.classify import classify_inputs, classify_strings

        can = self.model.classifies()
        if not can:
            raise CvaeError(f"run {self.name!r} does not classify: it needs one categorical condition alone, or the "
                            "semi-supervised model (model class m2: data with missing labels trains it)")
        if attribute and attribute not in can:
            raise CvaeError(f"{attribute!r} is not a condition this run classifies; it classifies {', '.join(can)}")
        if self.kind == "sequence":
            from ..apps.sequences import table_labels

            with self.upload_lines(data) as (names, texts, path):  # no condition of their own needed
                result = classify_strings(self.model, texts, attribute=attribute or None, names=names,
                                          y=table_labels(self.model, path, names), where="the upload")
            ids, extra = names, {"strings": texts}
        else:
            with self.upload(data, read=False) as (_, path):
                result = classify_inputs(self.model, str(path), attribute=attribute or None, n=self.limits.max_rows)
            ids, extra = _ids(result.ids), {}
        probs = _finite(torch.as_tensor(result.probs), "class probabilities").numpy()
        out = {"attribute": result.attribute, "classes": result.classes, "ids": ids, "predicted": result.predicted,
               "probability": _numbers(probs.max(1)), "probs": _numbers(probs), **extra}
        m = result.metrics()
        if m is not None:
            out["error"] = round(float(m["error"]["value"]), 6)  # not 0.30000000000000004
            out["labelled"] = m["n_examples"]
        return out

    def _check_expansion(self, path: Path, suffix: str) -> None:
        """A small compressed upload can decode to gigabytes (a .npz of zeros, a PNG of one colour): the
        decompressed size of a .npz and the pixels of an image are bounded before anything is decoded."""
        import zipfile

        if suffix == ".npz":
            try:
                with zipfile.ZipFile(path) as z:
                    size = sum(info.file_size for info in z.infolist())
            except (zipfile.BadZipFile, OSError, ValueError):
                return  # the reader names a damaged file
            if size > self.limits.max_decoded_bytes:
                raise CvaeError(f"the upload's arrays take {size:,} bytes decompressed; the limit is "
                                  f"{self.limits.max_decoded_bytes:,} (send at most {self.limits.max_rows} examples)")
        elif suffix in (".png", ".jpg"):
            from PIL import Image

            try:
                with Image.open(path) as im:
                    width, height = im.size
            except Exception:  # noqa: BLE001 - the reader names a damaged image
                return
            if width * height > self.limits.max_pixels:
                raise CvaeError(f"the uploaded image is {width}x{height} pixels; the limit is "
                                  f"{self.limits.max_pixels:,} pixels: shrink it first")

    @staticmethod
    def _check_count(value: int, limit: int, what: str) -> None:
        if not 1 <= value <= limit:
            raise CvaeError(f"{what} must be from 1 to {limit}, got {value}")


def _ids(ids) -> list:
    return [i.item() if hasattr(i, "item") else i for i in ids]


def run_names(runs: list[str | Path]) -> dict[str, Path]:
    """A short unique name per run folder (its folder name, then parent/name where two clash)."""
    paths = [Path(r).expanduser() for r in runs]
    for p in paths:
        if not (p / "config.json").is_file():
            raise CvaeError(f"{p} is not a run folder (no config.json); train one with `cvae train --out {p}`")
    names: dict[str, Path] = {}
    for p in paths:
        name = p.resolve().name
        if name in names and names[name].resolve() != p.resolve():
            name = f"{p.resolve().parent.name}-{name}"
        k = 2
        base = name
        while name in names and names[name].resolve() != p.resolve():
            name, k = f"{base}-{k}", k + 1
        names[name] = p
    return names
