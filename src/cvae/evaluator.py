"""Sample quality for image models, measured with a small classifier trained per data set.

The *evaluator* is a small CNN (two 3x3 convolutions with max-pooling, a 128-unit dense layer,
a linear read-out) trained on the real labelled images of a data set, for any image size and
number of classes. ``cvae evaluator train --data mnist`` stores it as ``mnist.safetensors`` plus
``mnist.json`` in ``~/.cache/cvae/evaluators/``. With it:

- **conditional accuracy**: for each class, the share of images generated for that class that the
  evaluator reads as that class; the per-class table and the mean (a CVAE that ignores its
  condition scores about 1 / number of classes);
- **Fréchet distance** between generated and real test images in the evaluator's 128-d feature
  space: |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017's formula). It is *not* the
  Inception FID and is not comparable with published FIDs; compare models on the same evaluator
  and the same number of images, next to the real-vs-real reference it is reported with;
- **precision and recall** of Kynkäänniemi et al. (2019), k-nearest-neighbour manifolds with k = 3
  in the same feature space: precision is the share of generated images inside the real manifold
  (quality), recall the share of real images inside the generated one (variety).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data.files import cache_dir
from .errors import CvaeError
from .figures import Figure
from .models import CVAE
from .models.base import SAMPLING_TEMPERATURE

FORMAT = "cvae-evaluator"
FORMAT_VERSION = 1
ALIASES = {"binarized-mnist": "mnist"}  # data sets without labels that share another's images


@dataclass
class EvaluatorConfig:
    """Everything that rebuilds an evaluator; stored beside its weights."""

    image_shape: tuple[int, int, int]
    classes: list[str]
    attribute: str = "label"  # the categorical condition the classes belong to
    data: str = ""  # the data set it was trained on
    channels: list[int] = field(default_factory=lambda: [32, 64])
    feature_dim: int = 128
    dropout: float = 0.5

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if len(self.image_shape) != 3:
            raise CvaeError(f"the evaluator works on images (C, H, W); got data of shape {self.image_shape}")
        if len(self.classes) < 2:
            raise CvaeError(f"the evaluator needs at least 2 classes, got {len(self.classes)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d


class Evaluator(nn.Module):
    """conv 3x3 (32) -> max-pool -> conv 3x3 (64) -> max-pool -> dense (128) = features -> classes.

    Pooling stops once a side is below 4 pixels and the last feature map is averaged down to at
    most 7 x 7, so any image size works (8x8 digits, 28x28 MNIST, 64x64 colour images).
    """

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        layers: list[nn.Module] = []
        for ch in config.channels:
            layers += [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = ch
        pool = nn.AdaptiveAvgPool2d((min(h, 7), min(w, 7))) if max(h, w) > 7 else nn.Identity()
        h, w = min(h, 7), min(w, 7)
        layers += [pool, nn.Flatten(), nn.Linear(c * h * w, config.feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, len(config.classes))
        self.info: dict = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate activations: the feature space of the Fréchet distance."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if tuple(x.shape[1:]) != self.config.image_shape:
            raise CvaeError(f"the evaluator for {self.config.data or 'this data'} takes images of shape "
                            f"{self.config.image_shape}, got {tuple(x.shape[1:])}")
        return x

    @torch.no_grad()
    def _batched(self, fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``fn`` over checked images in eval mode, ``batch_size`` at a time, the results on the CPU."""
        x = self._check(x)
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = torch.cat([fn(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    def embed(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Features of images in [0, 1], shape (N, feature_dim), on the CPU."""
        return self._batched(self.features, x, batch_size)

    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Class indices of images in [0, 1], shape (N,)."""
        return self._batched(lambda xb: self(xb).argmax(-1), x, batch_size)


# -- files ------------------------------------------------------------------------------------------

def default_path(data: str) -> Path:
    """``~/.cache/cvae/evaluators/<data>.safetensors`` (``$XDG_CACHE_HOME`` is honoured)."""
    return cache_dir() / "evaluators" / f"{Path(str(data)).stem if '/' in str(data) else data}.safetensors"


def find_evaluator(data: str) -> Path | None:
    """The stored evaluator for a data set name, if one was trained (aliases included)."""
    for name in (data, ALIASES.get(data)):
        if name and default_path(name).is_file():
            return default_path(name)
    return None


def save_evaluator(path: str | Path, evaluator: Evaluator, info: dict) -> Path:
    """Weights as safetensors (the config in its metadata) and the config plus ``info`` as JSON beside it."""
    from .runs import save_tensors, write_json

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors") if path.suffix in ("", ".json") else Path(str(path) + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": evaluator.config.to_dict()}
    save_tensors(path, evaluator.state_dict(), {"cvae_evaluator": json.dumps(meta)})
    write_json(path.with_suffix(".json"), {**meta, **info})
    evaluator.info = info
    return path


def load_evaluator(path: str | Path, device: str | torch.device = "cpu") -> Evaluator:
    from safetensors import safe_open

    from .runs import load_tensors

    path = Path(path)
    if not path.is_file():
        raise CvaeError(f"no evaluator at {path}; train one with `cvae evaluator train --data NAME --out {path}`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["cvae_evaluator"])
    except Exception as e:  # not safetensors, or no evaluator metadata
        raise CvaeError(f"{path} is not a cvae evaluator ({type(e).__name__}); train one with "
                        "`cvae evaluator train --data NAME`") from None
    if meta.get("format") != FORMAT:
        raise CvaeError(f"{path} is not a cvae evaluator (format {meta.get('format')!r})")
    evaluator = Evaluator(EvaluatorConfig(**meta["config"]))
    evaluator.load_state_dict(load_tensors(path))
    side = path.with_suffix(".json")
    evaluator.info = json.loads(side.read_text()) if side.is_file() else {}
    evaluator.info["path"] = str(path)
    return evaluator.to(device).eval()


# -- training -----------------------------------------------------------------------------------------

@dataclass
class EvaluatorTraining:
    path: Path
    evaluator: Evaluator
    accuracy: dict[str, float]  # held-out accuracy per split ("test", or "val" when there is no test split)
    epochs: int
    seconds: float
    held_out: dict[str, int] = field(default_factory=dict)  # labelled examples each accuracy was measured on


def accuracy_text(accuracy: dict, held_out: dict | None) -> str:
    """``val accuracy 0.9731 (1,500 labelled images)``, or why there is none."""
    if not accuracy:
        return "no held-out labelled image, so its accuracy is not measured (give the data a test split or more labels)"
    held_out = held_out or {}
    return ", ".join(f"{split} accuracy {v:.4f}" + (f" ({held_out[split]:,} labelled image{'s' * (held_out[split] != 1)})"
                                                    if split in held_out else "") for split, v in accuracy.items())


def _shifted(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (zero fill), one shift per group of examples."""
    if min(x.shape[-2:]) < 16:
        return x
    out = torch.zeros_like(x)
    groups = torch.randint(0, 4, (len(x),), generator=generator)
    for gi in range(4):
        idx = (groups == gi).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
        src = x[idx]
        h, w = x.shape[-2:]
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        shifted = torch.zeros_like(src)
        shifted[..., yd, xd] = src[..., ys, xs]
        out[idx] = shifted
    return out


@torch.no_grad()
def accuracy(evaluator: Evaluator, x: torch.Tensor, labels: torch.Tensor) -> float:
    return float((evaluator.predict(x) == labels.long().cpu()).float().mean())


EVALUATOR_EXAMPLES = 600_000  # images seen by default: 10 epochs of MNIST's 60,000; a smaller set gets more epochs


def train_evaluator(data: str, *, data_dir=None, epochs: int | None = None, batch_size: int = 128, lr: float = 2e-3,
                    seed: int = 0, limit: int | None = None, out: str | Path | None = None,
                    device: str = "cpu", augment: bool = True, progress: bool = True) -> EvaluatorTraining:
    """Train the evaluator on the labelled images of a data set and store it (default
    ``~/.cache/cvae/evaluators/<data>.safetensors``). Reports the held-out accuracy: on the test
    split when the data set has one (training then uses train + validation), else on the validation split.
    ``epochs`` defaults to 10, or on a set smaller than 60,000 images to as many as see 600,000 images."""
    from .data import load_data

    if epochs is not None and epochs < 1:
        raise CvaeError(f"--epochs must be at least 1, got {epochs}")
    splits = load_data(data, data_dir=data_dir, seed=seed, limit=limit)
    if splits.kind != "image":
        raise CvaeError(f"the evaluator classifies images; {data!r} holds {splits.kind} data")
    if splits.standardize:
        raise CvaeError(f"the evaluator expects images with values in [0, 1]; {data!r} does not have them")
    cat = [j for j, a in enumerate(splits.schema.attributes) if a.kind == "categorical"]
    if not cat:
        raise CvaeError(f"{data!r} has no class labels to train the evaluator on (it needs a 'label' column "
                        "or an image folder with one subfolder per class)")
    j = cat[0]
    attr = splits.schema.attributes[j]

    def labelled(split):
        """The split's images that carry a label (an image folder's unlabelled/ ones do not)."""
        known = torch.isfinite(split.y[:, j])
        return split.x[known], split.y[known, j].long()

    x, y = labelled(splits.train)
    held_out = {}
    if splits.test is not None:
        held_out["test"] = labelled(splits.test)
        if splits.val is not None and limit is None:
            vx, vy = labelled(splits.val)
            x, y = torch.cat([x, vx]), torch.cat([y, vy])
    elif splits.val is not None:
        held_out["val"] = labelled(splits.val)
    held_out = {name: pair for name, pair in held_out.items() if len(pair[1])}
    if len(y) < 2 * len(attr.classes):
        raise CvaeError(f"{data!r} has {len(y)} labelled training images for {len(attr.classes)} classes of "
                        f"{attr.name!r}; the evaluator needs at least two per class (it is trained on the labels)")
    if epochs is None:  # as many steps as on MNIST, whatever the data set's size
        epochs = max(10, math.ceil(EVALUATOR_EXAMPLES / len(x)))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    config = EvaluatorConfig(image_shape=tuple(x.shape[1:]), classes=list(attr.classes), attribute=attr.name,
                             data=splits.name)
    dev = torch.device(device)
    model = Evaluator(config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps, desc="evaluator", unit="step", leave=False)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(steps):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb = x[idx]
            if augment:
                xb = _shifted(xb, g)
            loss = F.cross_entropy(model(xb.to(dev)), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update()
                if s % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    acc = {name: accuracy(model, hx, hy) for name, (hx, hy) in held_out.items()}
    path = Path(out) if out else default_path(splits.name)
    info = {"accuracy": acc, "held_out": {name: len(pair[1]) for name, pair in held_out.items()}, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed, "augment": augment,
            "n_train": len(x), "limit": limit, "seconds": round(seconds, 1), "source": data}
    path = save_evaluator(path, model, info)
    return EvaluatorTraining(path=path, evaluator=model, accuracy=acc, epochs=epochs, seconds=seconds,
                             held_out=info["held_out"])


# -- the measures -------------------------------------------------------------------------------------

def frechet_distance_from_stats(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^(1/2) S2 S1^(1/2))^(1/2)), in float64.

    The matrix square root is taken through symmetric eigendecompositions, which is exact for the
    symmetric positive semi-definite covariance matrices here (tiny negative eigenvalues from
    rounding are clipped to zero)."""
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    vals, vecs = torch.linalg.eigh(cov1)
    root1 = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    middle = root1 @ cov2 @ root1
    middle = 0.5 * (middle + middle.T)
    tr_cross = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2.0 * tr_cross
    return float(fd.clamp_min(0.0))


def _stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = f.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (N1, d) and (N2, d)."""
    if len(features1) < 2 or len(features2) < 2:
        raise CvaeError("the Fréchet distance needs at least 2 examples in each set")
    return frechet_distance_from_stats(*_stats(features1), *_stats(features2))


def _knn_radii(f: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    if len(f) <= k:
        raise CvaeError(f"precision and recall with k = {k} need more than {k} examples per set, got {len(f)}")
    radii = torch.empty(len(f))
    for i in range(0, len(f), block):
        d = torch.cdist(f[i:i + block], f)
        radii[i:i + block] = d.kthvalue(k + 1, dim=1).values  # the first is the point itself (0)
    return radii


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """For each point: does it lie within the k-NN ball of some centre?"""
    inside = torch.empty(len(points), dtype=torch.bool)
    for i in range(0, len(points), block):
        inside[i:i + block] = (torch.cdist(points[i:i + block], centres) <= radii[None, :]).any(dim=1)
    return inside


@dataclass
class PrecisionRecall:
    precision: float
    recall: float
    n_real: int
    n_generated: int
    k: int

    def stderr(self, p: float, n: int) -> float:
        return math.sqrt(max(p * (1 - p), 0.0) / n)


def precision_recall(real: torch.Tensor, generated: torch.Tensor, *, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets (N, d)."""
    real, generated = real.float(), generated.float()
    precision = _coverage(generated, real, _knn_radii(real, k)).float().mean().item()
    recall = _coverage(real, generated, _knn_radii(generated, k)).float().mean().item()
    return PrecisionRecall(precision, recall, len(real), len(generated), k)


# -- what `cvae evaluate` reports ---------------------------------------------------------------------

def matching_attribute(model: CVAE, evaluator: Evaluator) -> tuple[int | None, str]:
    """The model's categorical condition whose classes are the evaluator's (index, or None and why)."""
    if not model.schema:
        return None, "a plain VAE (no condition): conditional accuracy does not apply"
    cands = [j for j, a in enumerate(model.schema.attributes)
             if a.kind == "categorical" and list(a.classes) == list(evaluator.config.classes)]
    if not cands:
        names = ", ".join(a.name for a in model.schema.attributes)
        return None, (f"no condition of this model ({names}) has the evaluator's classes "
                      f"({', '.join(evaluator.config.classes[:10])}): conditional accuracy does not apply")
    named = [j for j in cands if model.schema.attributes[j].name == evaluator.config.attribute]
    return (named or cands)[0], ""


@dataclass
class ConditionalAccuracy:
    """For each class: the share of samples generated for it that the evaluator reads as it."""

    attribute: str
    classes: list[str]
    per_class: list[float]
    per_class_stderr: list[float]
    n_per_class: int
    mean: Figure
    confusion: list[list[int]] | None = None  # confusion[i][j]: images generated for class i read as class j
    temperature: float = SAMPLING_TEMPERATURE  # of the draws of the codes

    def to_dict(self) -> dict:
        return {
            "name": f"conditional accuracy: share of images generated for {self.attribute}=C (at temperature "
                    f"{self.temperature}) that the evaluator classifies as C",
            "attribute": self.attribute,
            "n_per_class": self.n_per_class,
            "per_class": {c: {"value": a, "stderr": s} for c, a, s in zip(self.classes, self.per_class,
                                                                       self.per_class_stderr)},
            "mean": self.mean.to_dict(),
            "confusion": {"rows": "requested class", "columns": "class read by the evaluator",
                          "classes": list(self.classes), "counts": self.confusion},
        }


@torch.no_grad()
def conditional_accuracy(model: CVAE, evaluator: Evaluator, attribute: int, *, per_class: int = 1000,
                         seed: int = 0, batch_size: int = 1000, temperature: float | None = None,
                         guidance: float | None = None, codes: str | None = None) -> ConditionalAccuracy:
    """Generate ``per_class`` images for each class of the model's categorical ``attribute``
    (decoder means; the other conditions cycle / sit at their means; classifier-free ``guidance``,
    None: the run's) and classify them."""
    temperature = model.sampling_temperature(temperature, codes)
    attr = model.schema.attributes[attribute]
    g = torch.Generator().manual_seed(seed)
    acc, se, confusion = [], [], []
    n_classes = len(attr.classes)
    for ci, cls in enumerate(attr.classes):
        counts = torch.zeros(n_classes, dtype=torch.long)
        for i in range(0, per_class, batch_size):
            m = min(batch_size, per_class - i)
            x = model.sample(m, {attr.name: [cls] * m}, generator=g, temperature=temperature, guidance=guidance,
                             codes=codes).cpu()
            counts += torch.bincount(evaluator.predict(x).cpu().long(), minlength=n_classes)[:n_classes]
        confusion.append(counts.tolist())
        p = int(counts[ci]) / per_class
        acc.append(p)
        se.append(math.sqrt(p * (1 - p) / per_class))
    mean_se = math.sqrt(sum(s * s for s in se)) / len(se)
    mean = Figure(f"conditional accuracy, mean over {len(acc)} classes", sum(acc) / len(acc), mean_se,
                  unit="fraction", note=f"chance level {1 / len(acc):.3f}; binomial stderr")
    return ConditionalAccuracy(attr.name, list(attr.classes), acc, se, per_class, mean, confusion, temperature)


@torch.no_grad()
def generate(model: CVAE, n: int, y: torch.Tensor | None, *, seed: int = 0, batch_size: int = 1000,
             temperature: float | None = None, guidance: float | None = None,
             codes: str | None = None) -> torch.Tensor:
    """n images from the model (decoder means), with the raw conditions ``y`` (N, A) when it has any."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        cond = None if y is None or not model.schema else y[i:i + m]
        parts.append(model.sample(m, cond, generator=g, temperature=temperature,
                                  guidance=guidance if cond is not None else 0.0, codes=codes).cpu())
    return torch.cat(parts)


def bootstrap_fd_stderr(f1: torch.Tensor, f2: torch.Tensor, *, rounds: int = 20, seed: int = 0) -> float:
    """Standard error of the Fréchet distance from resampling both sets with replacement."""
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(rounds):
        i1 = torch.randint(0, len(f1), (len(f1),), generator=g)
        i2 = torch.randint(0, len(f2), (len(f2),), generator=g)
        vals.append(frechet_distance(f1[i1], f2[i2]))
    return float(torch.tensor(vals).std())


@dataclass
class SampleQualityReport:
    evaluator: dict
    figures: dict[str, Figure]
    conditional_accuracy: ConditionalAccuracy | None
    notes: list[str]
    guidance: float = 0.0  # the classifier-free guidance weight the images were generated with
    codes: str = "prior"  # where their codes came from: the prior or the fitted aggregate posterior

    def to_dict(self) -> dict:
        d = {"evaluator": self.evaluator, "guidance": self.guidance, "codes": self.codes,
             **{k: f.to_dict() for k, f in self.figures.items()}}
        d["conditional_accuracy"] = self.conditional_accuracy.to_dict() if self.conditional_accuracy else None
        d["notes"] = self.notes
        return d


def sample_quality(model: CVAE, evaluator: Evaluator, real_x: torch.Tensor, real_y: torch.Tensor | None, *,
                   reference_x: torch.Tensor | None = None, n: int | None = None, per_class: int = 1000,
                   k: int = 3, seed: int = 0, temperature: float | None = None,
                   guidance: float | None = None, codes: str | None = None) -> SampleQualityReport:
    """Conditional accuracy, Fréchet distance, precision and recall of generated images against
    ``real_x`` (N, C, H, W) in [0, 1]. ``reference_x`` (other real images, e.g. training images)
    gives the real-vs-real figures that a perfect model would reach with this many images.
    ``guidance``: the classifier-free guidance weight of the generated images (None: the run's);
    ``codes``: where their codes come from (None: the run's fitted aggregate posterior where it has one)."""
    guidance = model.guidance_weight(guidance)
    aggregate = model.sampling_codes(codes) == "aggregate"  # refused (one line) when asked of a run without the fit
    temperature = model.sampling_temperature(temperature, codes)
    shape = tuple(model.config.data_shape)
    if shape != evaluator.config.image_shape:
        raise CvaeError(f"the evaluator (trained on {evaluator.config.data}) takes images of shape "
                        f"{evaluator.config.image_shape}, but this model makes {shape}; "
                        "train an evaluator on this model's data with `cvae evaluator train --data DATA`")
    n = min(n or len(real_x), len(real_x))
    real_x = real_x[:n]
    real_y = None if real_y is None else real_y[:n]
    known = None
    if real_y is not None and torch.isnan(real_y).any():
        # a semi-supervised data set: real images without their label; the evaluator's accuracy counts the
        # labelled ones, and the generated images take labels drawn from those seen in the column
        known, real_y = torch.isfinite(real_y), real_y.clone()
        g = torch.Generator().manual_seed(seed)
        for col in range(real_y.shape[1]):
            seen = real_y[known[:, col], col]
            if not len(seen):
                raise CvaeError(f"none of the {n} real images has a value of condition {model.schema.names[col]!r}; "
                                "evaluate on a split that has labels (--split)")
            gone = ~known[:, col]
            real_y[gone, col] = seen[torch.randint(len(seen), (int(gone.sum()),), generator=g)]
    space = (f"the {evaluator.config.feature_dim}-d feature space of the cvae evaluator CNN for "
             f"{evaluator.config.data or 'this data'}")
    notes = [f"Fréchet distance, precision and recall are measured in {space}: NOT the Inception FID, "
             "not comparable with published FIDs; compare models with the same evaluator and the same number of images",
             "generated images are decoder means E[x | z, c] with z "
             + ("from the aggregate posterior fitted after training (aggregate.safetensors)" if aggregate else "~ p(z | c)")
             + f" at temperature {temperature} (the standard deviations scaled by it; cvae sample's default is "
             f"{SAMPLING_TEMPERATURE} for the prior, 1 for the fit)"
             + ("; conditions as in the real images" if model.schema else "")
             + (f"; classifier-free guidance weight {guidance:g}" if guidance else "")]
    info = {"path": evaluator.info.get("path", ""), "data": evaluator.config.data,
            "accuracy": evaluator.info.get("accuracy", {}), "classes": evaluator.config.classes,
            **({"held_out": evaluator.info["held_out"]} if "held_out" in evaluator.info else {})}
    figures: dict[str, Figure] = {}
    fake = generate(model, n, real_y, seed=seed, temperature=temperature, guidance=guidance, codes=codes)
    f_real, f_fake = evaluator.embed(real_x), evaluator.embed(fake)
    if real_y is not None and model.schema:
        j, _ = matching_attribute(model, evaluator)
        if j is not None:
            rows = slice(None) if known is None else known[:, j]
            m = n if known is None else int(rows.sum())
            if m:
                acc = accuracy(evaluator, real_x[rows], real_y[rows, j])
                figures["evaluator_accuracy_real"] = Figure(
                    "evaluator accuracy on the real images" + ("" if known is None else f" ({m} labelled)"), acc,
                    math.sqrt(acc * (1 - acc) / m), unit="fraction")
    fd = frechet_distance(f_real, f_fake)
    figures["frechet_distance"] = Figure(
        "Fréchet distance, generated vs real, evaluator features", fd, bootstrap_fd_stderr(f_real, f_fake, seed=seed),
        unit="squared feature units",
        note=f"{n} images each, in {space}; NOT the Inception FID; stderr from 20 bootstrap resamples")
    pr = precision_recall(f_real, f_fake, k=k)
    figures["precision"] = Figure(f"precision (Kynkäänniemi et al. 2019, k = {k})", pr.precision,
                                  pr.stderr(pr.precision, n), unit="fraction",
                                  note="share of generated images inside the k-NN manifold of the real ones (quality)")
    figures["recall"] = Figure(f"recall (Kynkäänniemi et al. 2019, k = {k})", pr.recall, pr.stderr(pr.recall, n),
                               unit="fraction",
                               note="share of real images inside the k-NN manifold of the generated ones (variety)")
    if reference_x is not None and len(reference_x) >= n:
        f_ref = evaluator.embed(reference_x[:n])
        pr_ref = precision_recall(f_real, f_ref, k=k)
        what = f"{n} real training images in place of generated ones: what a perfect model would reach"
        figures["frechet_distance_real_reference"] = Figure(
            "reference: Fréchet distance, real train vs real", frechet_distance(f_real, f_ref),
            unit="squared feature units", note=what)
        figures["precision_real_reference"] = Figure("reference: precision, real train vs real", pr_ref.precision,
                                                     unit="fraction", note=what)
        figures["recall_real_reference"] = Figure("reference: recall, real train vs real", pr_ref.recall,
                                                  unit="fraction", note=what)
    cond = None
    j, why = matching_attribute(model, evaluator)
    if j is not None:
        cond = conditional_accuracy(model, evaluator, j, per_class=per_class, seed=seed, temperature=temperature,
                                    guidance=guidance, codes=codes)
    else:
        notes.append(why)
    return SampleQualityReport(evaluator=info, figures=figures, conditional_accuracy=cond, notes=notes,
                               guidance=guidance, codes="aggregate" if aggregate else "prior")
