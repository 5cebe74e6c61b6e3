"""The run folder: everything a run writes, written atomically, with no pickle anywhere.

    config.json               the model, training and data settings; the run's status
    model.safetensors         the weights (the latest epoch; the best one after early stopping)
    trainer_state.safetensors optimizer moments, RNG states and loop counters for an exact --resume
    metrics.jsonl             one row per epoch
    summary.json              the final figures (train / validation / test)
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import aggregate
from .errors import CvaeError, CvaeWarning
from .models import MODELS, RunInfo, VAEModel, build_model
from .models.config import ModelTooLarge, build_on_meta
from .registry import UnknownPart

FORMAT = "cvae-run"
FORMAT_VERSION = 2
# Weight names that moved when the prior and the likelihood became parts of their own (version 1 -> 2).
RENAMED_V1 = {"prior_net.weight": "prior.net.weight", "prior_net.bias": "prior.net.bias",
              "log_sigma": "likelihood.log_sigma"}
SECTIONS = ("model", "train", "data", "execution", "summary")  # the parts of config.json that are JSON objects


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run folder is for colleagues to read too
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_jsonable)
            f.write("\n")

    atomic_write(path, w)


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def resume_command(run: Path) -> str:
    """The command that resumes ``run``: ``cvae recommend train`` for a recommender run, else ``cvae train``."""
    try:
        recommender = "recommend" in json.loads((Path(run) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        recommender = False
    return "cvae recommend train" if recommender else "cvae train"


def _unreadable(path: Path, e: Exception) -> CvaeError:
    fix = {"model.safetensors": f"; restore it from a copy of the run (or delete it: `{resume_command(path.parent)} "
                                f"--resume --out {path.parent} --epochs N`, N above the epochs done, trains on from "
                                "trainer_state.safetensors and writes it again)",
           "trainer_state.safetensors": "; restore it from a copy of the run (--resume needs it)"}.get(path.name, "")
    return CvaeError(f"cannot read {path}: {e}. The file is damaged or not a safetensors file{fix}")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(Path(path), e) from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a safetensors file, read from its header alone."""
    return read_header(path)[0]


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensor shapes and the metadata of a safetensors file, from one read of its header."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(Path(path), e) from None


def read_config(run: str | Path) -> dict:
    """A run's config.json, checked: UTF-8 JSON, a cvae run, a format this cvae reads, sections that
    are JSON objects."""
    run = Path(run)
    cfg_path = run / "config.json"
    if not run.is_dir():
        raise CvaeError(f"{run} is not a folder; give the run folder that `cvae train` wrote (e.g. runs/digits-mlp-400)")
    if not cfg_path.is_file():
        raise CvaeError(f"{run} is not a cvae run: it has no config.json (train one with `cvae train --out {run}`)")
    raw = cfg_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CvaeError(f"{cfg_path} is not UTF-8 text (byte {raw[e.start]:#04x} at position {e.start}); the run "
                        "folder is damaged: restore config.json from a copy of the run, or train it again") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise CvaeError(f"{cfg_path} is not valid JSON ({e}); the run folder is damaged") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CvaeError(f"{cfg_path} is not a cvae run config (no 'format': '{FORMAT}')")
    version = cfg.get("format_version", 1)
    if isinstance(version, bool) or not (isinstance(version, int) or (isinstance(version, float) and version.is_integer())) \
            or version < 1:
        raise CvaeError(f"{cfg_path}: 'format_version' must be a whole number from 1 to {FORMAT_VERSION}, got {version!r}; "
                        "the run folder is damaged")
    if version > FORMAT_VERSION:
        from . import __version__

        raise CvaeError(f"{run} was written by a newer cvae (run format {int(version)}); this cvae ({__version__}) "
                        f"reads run formats up to {FORMAT_VERSION}: upgrade cvae to a version that reads format {int(version)}")
    cfg["format_version"] = int(version)
    for key in SECTIONS:
        if key in cfg and not isinstance(cfg[key], dict):
            raise CvaeError(f"{cfg_path}: {key!r} must be a JSON object (settings by name), got {cfg[key]!r:.60}; "
                            "the run folder is damaged")
    return cfg


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None."""
    return next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


def resolve_device(name: str | torch.device) -> torch.device:
    """``--device``: auto (a CUDA GPU if there is one), cpu, cuda or cuda:N, checked in one line."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CvaeError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CvaeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def load_model(run: str | Path, *, device: str | torch.device = "cpu", weights: str = "model.safetensors") -> VAEModel:
    """Rebuild the model of a run folder (whatever registered class its config.json names) and load
    its weights. config.json is checked field by field, and against the shapes in the weights
    file's header, before any weight is allocated."""
    run = Path(run)
    device = resolve_device(device)
    cfg = read_config(run)
    path = run / weights
    model_config, _ = check_weights(run, cfg, weights=weights)
    model = build_model(model_config, run=RunInfo(run, cfg))
    state = load_tensors(path)
    if cfg.get("format_version", 1) < 2:
        state = {RENAMED_V1.get(k, k): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes a model class built off the meta device could not be checked for
        raise CvaeError(f"{path} does not match the model in config.json ({str(e).splitlines()[-1].strip()}); "
                        "restore config.json to the settings the run was trained with") from None
    if missing or unexpected:
        raise CvaeError(f"{path} does not match the model in config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    bad = first_nonfinite(state)
    if bad is not None:  # training never saves such weights: the file was damaged or edited
        raise CvaeError(f"{path} holds NaN or infinite values ({bad}), which training never saves: the file is "
                        "damaged; restore it from a copy of the run")
    if weights == "model.safetensors" and (run / aggregate.FILE).exists() and model.aggregate_codes:
        try:
            model.aggregate = load_aggregate(run, model)
        except CvaeError as e:  # refused where codes are drawn from it; encoding, scoring and refitting go on
            model.aggregate_problem = str(e)
    elif weights == "model.safetensors" and model.aggregate_codes and _summary_names_aggregate(run):
        # deleted by hand: the default samples fell back to the prior without a word
        model.aggregate_problem = (f"{run / aggregate.FILE}, which training wrote (summary.json names it), is gone; "
                                   f"`cvae aggregate {run}` fits it again, or --codes prior draws from the prior")
    return model.to(device).eval()


def _summary_names_aggregate(run: Path) -> bool:
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and isinstance(summary.get("aggregate"), dict) and \
        summary["aggregate"].get("file") == aggregate.FILE


def save_aggregate(run: str | Path, fit: aggregate.AggregatePosterior) -> Path:
    path = Path(run) / aggregate.FILE
    tensors, metadata = fit.to_tensors()
    save_tensors(path, tensors, metadata)
    return path


def load_aggregate(run: str | Path, model: VAEModel) -> aggregate.AggregatePosterior:
    """The run's fitted aggregate posterior (cvae.aggregate), checked against its model."""
    path = Path(run) / aggregate.FILE
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CvaeError(f"cannot read {path}: {e}; `cvae aggregate RUN` fits it again (or --codes prior samples "
                        "without it)") from None
    return aggregate.AggregatePosterior.from_tensors(load_tensors(path), metadata, model, str(path))


# model settings a user may change in config.json after training (they do not change what the weights compute)
ADJUSTABLE = ("schema", "guidance")  # the schema's classes are checked on their own; guidance: the default weight


def recorded_settings(config) -> dict:
    """The model settings model.safetensors records: every one that decides what the weights compute."""
    d = json.loads(json.dumps(config.to_dict()))
    return {k: v for k, v in d.items() if k not in ADJUSTABLE}


def weights_metadata(model) -> dict:
    """What model.safetensors records beside the tensors: the format, the model settings that decide what
    the weights compute, and the classes of each categorical condition in the order of the model's inputs
    (config.json's copies are checked against them when read)."""
    meta = {"format": FORMAT, "model": json.dumps(recorded_settings(model.config))}
    if model.schema:
        meta["classes"] = json.dumps({a.name: list(a.classes) for a in model.schema.attributes
                                      if a.kind == "categorical"})
    return meta


def _check_recorded(cfg: dict, config, cfg_path: Path, path: Path, meta: dict[str, str]) -> None:
    """config.json's model settings and classes against those the weights were trained with (``meta``, the
    header's metadata of files that record them): an edit that keeps every tensor's shape (the likelihood,
    the activation, the classes' order) would otherwise load and compute something else."""
    try:
        recorded = {k: json.loads(meta[k]) for k in ("classes", "model") if meta.get(k) is not None}
    except ValueError:
        return  # metadata that is not JSON: written by something else, nothing to compare
    settings = recorded.get("model")
    if isinstance(settings, dict):
        now = recorded_settings(config)
        for key, value in settings.items():
            if key in now and now[key] != value:
                raise CvaeError(f"{cfg_path}: model setting {key} is {json.dumps(now[key])} but the weights were trained "
                                f"with {json.dumps(value)} (recorded in {path.name}); restore it (or config.json from a "
                                "copy of the run)")
    classes = recorded.get("classes")
    if not isinstance(classes, dict):
        return
    attributes = {a.get("name"): a.get("classes") for a in (cfg["model"].get("schema") or {}).get("attributes", [])
                  if isinstance(a, dict) and a.get("kind") == "categorical"}
    for name, listed in classes.items():
        if attributes.get(name) != listed:
            raise CvaeError(f"{cfg_path}: the classes of condition {name!r} ({attributes.get(name)}) are not those the "
                            f"weights were trained with ({listed}, in this order; recorded in {path.name}); restore "
                            "config.json from a copy of the run")


def check_weights(run: str | Path, cfg: dict | None = None, *, weights: str = "model.safetensors"):
    """The run's model settings, checked: every field's type and range, then the model they build
    (on the meta device: nothing allocated) against the tensor shapes in the header of ``weights``.
    Returns the model config and the saved shapes (None when there are no weights yet)."""
    run = Path(run)
    cfg = read_config(run) if cfg is None else cfg
    cfg_path, path = run / "config.json", run / weights
    if not isinstance(cfg.get("model"), dict):
        if isinstance(cfg.get("recommend"), dict) and cfg["recommend"].get("model") == "ease":
            raise CvaeError(f"{run} is an EASE run (item-item weights, not a VAE): use it with `cvae recommend {run} "
                            "--user-history FILE ...` or cvae.recommend.load_recommender")
        raise CvaeError(f"{cfg_path} has no 'model' settings; the run folder is damaged")
    if not path.is_file():
        if weights == "model.safetensors" and (run / "trainer_state.safetensors").is_file():
            raise CvaeError(f"{run} has no model.safetensors (deleted?); restore it from a copy of the run, or "
                            f"`{resume_command(run)} --resume --out {run} --epochs N` (N above the epochs done) trains "
                            "on from "
                            "trainer_state.safetensors and writes it again")
        raise CvaeError(f"{run} has no {weights} yet (training has not finished an epoch)")
    shapes, meta = read_header(path)
    if cfg.get("format_version", 1) < 2:
        shapes = {RENAMED_V1.get(k, k): v for k, v in shapes.items()}
    config = _model_config(cfg["model"], cfg_path, path, shapes)
    _check_shapes(config, shapes, cfg_path, path)
    _check_recorded(cfg, config, cfg_path, path, meta)
    return config, shapes


def missing_part(run_dir, e: UnknownPart) -> CvaeError:
    """A run trained with a part of the user's own that this process has not imported: said so, not
    "config.json is damaged" (the run is whole; its plug-in is missing)."""
    return CvaeError(f"{run_dir} was trained with the {e.kind} {e.name!r}, which nothing in this process registers: "
                     "import the module that defines it before loading the run (from the command line: name its "
                     "file in CVAE_PARTS, e.g. CVAE_PARTS=my_part.py, or install the package whose cvae.parts entry "
                     "point registers it)")


def _model_config(d: dict, cfg_path: Path, path: Path, shapes: dict):
    name = d.get("model_class", "cvae")
    if not isinstance(name, str):
        raise CvaeError(f"{cfg_path} is damaged: model setting model_class must be a name, got {name!r}")
    try:
        config_class = MODELS.get(name).config_class
        if hasattr(config_class, "from_saved"):
            return config_class.from_saved(d)
        return config_class.from_dict(d)
    except UnknownPart as e:  # a part of the user's own (a plugin) that this process has not imported
        raise missing_part(cfg_path.parent, e) from None
    except ModelTooLarge as e:
        saved = sum(math.prod(s) for s in shapes.values())
        if saved >= e.parameters:  # the weights are that large: the run is too large for this machine
            raise CvaeError(f"cannot load {cfg_path.parent}: {e}") from None
        shown = "prior_options.components" if e.setting == "prior_options" else e.setting
        raise CvaeError(f"{cfg_path} does not match {path.name}: its model settings make {e.parameters:,} parameters but "
                        f"the weights hold {saved:,}; model.{shown} was likely changed after training (now "
                        f"{_shown(d, e.setting)}): restore it to the value the run was trained with") from None
    except CvaeError as e:
        raise CvaeError(f"{cfg_path} is damaged: {e}; restore it from a copy of the run, or train the run again") from None


def _shown(d: dict, setting: str):
    value = d.get(setting)
    if setting == "prior_options" and isinstance(value, Mapping):
        value = value.get("components")
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _meta_shapes(config) -> dict[str, tuple[int, ...]] | None:
    """The shape of every saved tensor of the model ``config`` builds, built on the meta device; None
    when the model class cannot be built there."""
    model = build_on_meta(config)
    return None if model is None else {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differences(a: dict, b: dict) -> set:
    """Where two sets of tensor shapes differ: (name, axis) for a size, (name, None) for a tensor in one only."""
    out = {(k, None) for k in set(a) ^ set(b)}
    for k in set(a) & set(b):
        if len(a[k]) != len(b[k]):
            out.add((k, None))
        else:
            out.update((k, i) for i, (x, y) in enumerate(zip(a[k], b[k])) if x != y)
    return out


def _trials(config):
    """Each model setting that sets shapes, with other values it could have had."""
    from .likelihoods import LIKELIHOODS
    from .nn import ENCODERS
    from .priors import PRIORS

    yield "latent_dim", [config.latent_dim + 1]
    yield "hidden", [[h + 1 for h in config.hidden]] if config.hidden else [[8]]
    yield "channels", [[c + 1 for c in config.channels]] if config.channels else [[8]]
    yield "data_shape", [tuple(s + 1 for s in config.data_shape)]
    probe = {"name": "__probe__", "kind": "continuous", "classes": [], "mean": 0.0, "std": 1.0}
    yield "schema", [{"attributes": [*config.schema.get("attributes", []), probe]}]
    yield "condition_at", [v for v in range(-1, len(config.hidden) + 1) if v != config.condition_at]
    yield "standardize", [not config.standardize]
    yield "likelihood", [n for n in LIKELIHOODS if n != config.likelihood]
    yield "prior", [n for n in PRIORS if n != config.prior]
    yield "arch", [n for n in ENCODERS if n != config.arch]


def _likely_changed(config, expected: dict, saved: dict) -> list[str]:
    """The model settings whose change best explains how the saved shapes differ from the expected
    ones: each setting is changed in turn (on the meta device) and the shapes it moves compared."""
    wrong = _differences(expected, saved)
    scores = {}
    for name, values in _trials(config):
        for value in values:
            trial = copy.copy(config)
            setattr(trial, name, value)
            try:
                shapes = _meta_shapes(trial)
            except CvaeError:
                continue
            if shapes is None:
                continue
            moved = _differences(expected, shapes)
            if moved:
                score = 1.0 if shapes == saved else len(moved & wrong) / len(moved | wrong)
                scores[name] = max(scores.get(name, 0.0), score)
    best = max(scores.values(), default=0.0)
    return [n for n, v in scores.items() if v == best and v > 0]


def _check_shapes(config, saved: dict, cfg_path: Path, path: Path) -> None:
    expected = _meta_shapes(config)
    if expected is None or expected == saved:
        return
    wrong = sorted(k for k in set(expected) & set(saved) if expected[k] != saved[k])
    if wrong:
        k = wrong[0]
        what = f"{k} has shape {list(saved[k])} in the weights but {list(expected[k])} by config.json"
    else:
        missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        what = ", ".join(([f"config.json's model has {', '.join(missing[:3])} but the weights do not"] if missing else [])
                         + ([f"the weights hold {', '.join(unexpected[:3])} that config.json's model lacks"]
                            if unexpected else []))
    suspects = _likely_changed(config, expected, saved)
    likely = ("; likely changed: " + ", ".join(f"model.{n} (now {_value(config, n)})" for n in suspects)) if suspects else ""
    raise CvaeError(f"{path} does not match the model in {cfg_path}: {what}{likely}. Restore config.json to the "
                    "settings the run was trained with (or train the run again)")


def _value(config, name: str):
    if name == "schema":
        return "conditions " + (", ".join(a["name"] for a in config.schema.get("attributes", [])) or "none")
    value = getattr(config, name)
    return list(value) if isinstance(value, tuple) else value


# -- checks before a run is resumed --------------------------------------------------------------------

def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``. A row is appended after its epoch's weights are saved, so
    a crash can cut off only the last line: that line is dropped with a :class:`CvaeWarning`. A
    damaged line elsewhere is an error (the file was edited or damaged otherwise)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(i + 1, line) for i, line in enumerate(path.read_bytes().split(b"\n")) if line.strip()]
    rows = []
    for j, (number, line) in enumerate(lines):
        try:
            row = json.loads(line.decode("utf-8"))
            int(row["epoch"])
        except (ValueError, TypeError, KeyError, IndexError):
            if j == len(lines) - 1:
                warnings.warn(f"{path}: its last line (line {number}) is cut off, as a crash while it was written "
                              f"leaves it; it is dropped and the {len(rows)} row(s) before it are kept", CvaeWarning,
                              stacklevel=2)
                break
            raise CvaeError(f"{path} line {number} is not a metrics row (it is damaged); remove that line (or the "
                            "file, losing the loss curve but not the model) and run again") from None
        rows.append(row)
    return rows


def check_resumable(run: str | Path) -> None:
    """What ``--resume`` reads, checked before any data is loaded or anything in the folder touched:
    config.json (its 'train' and 'model' settings, which must agree), the weights against it, and
    metrics.jsonl. A folder without config.json is left to the trainer (it says what to do)."""
    from .config import TrainConfig

    run = Path(run)
    if not (run / "config.json").is_file():
        return
    cfg = read_config(run)
    cfg_path = run / "config.json"
    if not isinstance(cfg.get("train"), dict):
        raise CvaeError(f"{cfg_path} has no 'train' settings to resume with; the run folder is damaged")
    try:
        train = TrainConfig.from_dict(cfg["train"], where=str(cfg_path))
    except UnknownPart as e:
        raise missing_part(run, e) from None
    except CvaeError as e:
        raise CvaeError(f"{cfg_path} is damaged: its 'train' settings: {e}; restore it from a copy of the run") from None
    if (run / "model.safetensors").is_file():
        model, _ = check_weights(run, cfg)
        for key in TrainConfig.MODEL_KEYS:
            given = getattr(train, key)
            if given is None or (key == "prior" and given == "auto"):
                continue
            kept = getattr(model, key)
            if (list(kept) if isinstance(kept, (list, tuple)) else kept) != given:
                raise CvaeError(f"{cfg_path}: train.{key} ({given!r}) disagrees with model.{key} ({kept!r}), the value "
                                f"the weights were trained with; restore train.{key} to {kept!r}")
    with warnings.catch_warnings():  # a check: the trainer warns once when it drops a cut-off last line
        warnings.simplefilter("ignore", CvaeWarning)
        read_metrics(run / "metrics.jsonl")
