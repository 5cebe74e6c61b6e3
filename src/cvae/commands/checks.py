"""Checks every command makes before it computes or writes anything: flags in range, counts that fit
in memory, conditions the model can compute with, and outputs that are finite numbers."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..conditions import CONDITION_LIMIT, EXTRAPOLATION_SD
from ..errors import CvaeError
from ..memory import free_memory

# Count flags of the commands (attribute -> flag): each must be a positive whole number when given.
COUNTS = {"n": "--n", "steps": "--steps", "top": "--top", "kl_examples": "--kl-examples", "per_class": "--per-class",
          "k": "--k", "samples": "--samples", "batch_size": "--batch-size", "epochs": "--epochs", "limit": "--limit"}
# Upper bounds of counts whose cost grows with them and that no use needs larger: a path of 100,000
# steps or 10**9 importance samples ran on for hours without a word.
LIMITS = {"steps": ("--steps", 1000, "a path or traversal drawn with more steps than pixels across shows nothing more"),
          "k": ("--k", 100_000, "Burda et al.'s k = 5,000 already measures the likelihood to a small fraction of a nat")}
SEED_LIMIT = 2**63  # torch and numpy take seeds in [0, 2**63)
FAR = EXTRAPOLATION_SD  # a continuous condition this many standard deviations from its training mean is extrapolation


def check_args(args) -> None:
    """The flags every command shares, checked before the command runs: --seed and the counts."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise CvaeError(f"--seed must be a whole number from 0 to 2**63 - 1 ({SEED_LIMIT - 1}), got {seed}")
    for name, flag in COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and not isinstance(value, bool) and isinstance(value, int) and value < 1:
            raise CvaeError(f"{flag} must be a positive whole number, got {value}")
    for name, (flag, most, why) in LIMITS.items():
        value = getattr(args, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            raise CvaeError(f"{flag} {value:,} is more than {most:,}, the most this command takes ({why})")
    low_high = getattr(args, "range", None)
    if low_high is not None and not all(math.isfinite(v) for v in low_high):
        raise CvaeError(f"--range must be two finite numbers (prior standard deviations, e.g. -3 3), got {low_high}")


# -- memory --------------------------------------------------------------------------------------------

def check_rows(config, rows: int, what: str, lower: str, *, hint: str = "") -> None:
    """Refuse a command that would hold ``rows`` examples of a model's data at once (decoded outputs,
    their copies for writing, the decoder's widest layer) in more than half the free memory.
    ``config`` is the model's ModelConfig; ``what`` shows the flags asked for, ``lower`` which to lower."""
    features = math.prod(config.data_shape)
    widest = max([*config.hidden, 2 * config.latent_dim, features])
    need = rows * 4 * (3 * features + 2 * widest)  # float32: output, data units, the writer's copy; activations
    free = free_memory()
    if free and need > free / 2:
        raise CvaeError(f"{what} asks for {rows:,} examples of shape {tuple(config.data_shape)} at once: about "
                        f"{need / 1e9:,.1f} GB, more than half of the memory free now ({free / 1e9:,.1f} GB); lower "
                        f"{lower}{hint}")


def largest_class_count(schema, attribute: str | None = None) -> int:
    """Classes of the categorical condition ``attribute`` (default: the one with the most classes)."""
    cats = [a for a in (schema.attributes if schema else []) if a.kind == "categorical"]
    if attribute:
        cats = [a for a in cats if a.name == attribute] or cats
    return max((len(a.classes) for a in cats), default=1)


# -- conditions ----------------------------------------------------------------------------------------

def check_conditions(model, spec, flag: str = "--condition") -> None:
    """Continuous values of a condition string (``alcohol=12.5,label=1``) that the model can compute
    with: finite, and finite after standardisation in 32-bit floats. Far from the training range
    (more than FAR standard deviations) is allowed with a warning."""
    from ..conditions import parse_assignments
    from ..errors import CvaeWarning

    if not isinstance(spec, str) or "=" not in spec or not model.schema:
        return
    known = {a.name: a for a in model.schema.attributes}
    for name, text in parse_assignments(spec).items():
        a = known.get(name)
        if a is None or a.kind != "continuous":
            continue  # unknown names and classes are reported where the condition is read
        try:
            value = a.code(text)
        except CvaeError as e:
            raise CvaeError(f"{flag} {name}={text}: {e}") from None
        with np.errstate(over="ignore", invalid="ignore"):
            z = (np.float32(value) - np.float32(a.mean)) / np.float32(a.std)
        where = f"its training mean is {a.mean:.4g}, standard deviation {a.std:.4g}"
        if not np.isfinite(z) or abs(float(z)) > CONDITION_LIMIT:
            raise CvaeError(f"{flag} {name}={text} is too far outside the training range of {name!r} to compute with "
                            f"(more than {CONDITION_LIMIT:,.0f} standard deviations from the mean; {where}); give a "
                            "value within a few standard deviations of the mean")
        if abs(float(z)) > FAR:
            warnings.warn(f"{flag} {name}={text} is {abs(float(z)):.3g} standard deviations from the training mean "
                          f"({where}); the model has seen nothing like it, so its outputs are extrapolation",
                          CvaeWarning, stacklevel=2)


def check_condition_args(model, args, *names: str) -> None:
    """check_conditions for each of the named flags of ``args`` (a string or a list of strings)."""
    for name in names:
        value = getattr(args, name, None)
        flag = {"start": "--from", "end": "--to"}.get(name, "--" + name.replace("_", "-"))
        for spec in value if isinstance(value, list) else [value]:
            check_conditions(model, spec, flag)


# -- outputs -------------------------------------------------------------------------------------------

def guard_outputs(model, hint: str = "") -> None:
    """Make ``model`` refuse to hand over NaN or infinite outputs: every decoded output passes through
    ``to_data_units`` (sample, decode, reconstruct, the apps' own decoding) and every code through
    ``encode``; both are wrapped on this instance to raise one clear error instead, before anything
    is written."""
    import torch

    def refuse(what: str):
        raise CvaeError(f"the model's {what} hold NaN or infinite values, so nothing was written; "
                        + (hint or "its weights may be damaged (train the run again)"))

    to_data_units, encode = model.to_data_units, model.encode

    def checked_units(x):
        out = to_data_units(x)
        if not bool(torch.isfinite(out).all()):
            refuse("outputs")
        return out

    def checked_encode(*a, **kw):
        qz = encode(*a, **kw)
        if not all(bool(torch.isfinite(t).all()) for t in (qz.mu, qz.logvar)):
            refuse("latent codes")
        return qz

    model.to_data_units = checked_units
    model.encode = checked_encode


def condition_hint(model, *specs) -> str:
    """What to check when outputs are not finite and a continuous condition was given."""
    given = [s for s in specs if isinstance(s, str) and "=" in s]
    cont = [a for a in (model.schema.attributes if model.schema else []) if a.kind == "continuous"]
    if not given or not cont:
        return ""
    ranges = ", ".join(f"{a.name}: mean {a.mean:.4g}, standard deviation {a.std:.4g}" for a in cont)
    return f"check the condition(s) {'; '.join(given)}: values far outside the training range ({ranges}) can overflow"


def token_choice(args) -> tuple[str, float]:
    """--decode and --token-temperature of a sequence run, their defaults filled in: tokens sampled at
    GENERATE_TOKEN_TEMPERATURE, or at 1 (the model's own distribution) with --draw."""
    from ..models.seqvae import GENERATE_DECODE, GENERATE_TOKEN_TEMPERATURE

    default = 1.0 if getattr(args, "draw", False) else GENERATE_TOKEN_TEMPERATURE
    return (args.decode or GENERATE_DECODE,
            default if args.token_temperature is None else args.token_temperature)
