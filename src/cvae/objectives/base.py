"""Objectives: registered parts that turn a forward pass into a loss and named figures.

An objective is built from the training settings (``Objective.from_config``) and called as
``objective(model, x, c, progress=epochs_done)``; it returns one :class:`ObjectiveOutput`: the loss
to minimise, the ELBO's two parts (so that runs of every objective report comparable figures) and
a dict of named extra terms. The training loop logs every term to ``metrics.jsonl``, TensorBoard
and the progress bar without knowing what they are; :meth:`Objective.schedule` gives the values of
the objective's schedules (a KL weight) at the end of each epoch for the same logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import CvaeError
from ..registry import Registry

OBJECTIVES = Registry("objective", flag="--objective")

# Training settings that belong to some objectives only: (setting, its neutral value, flag).
OBJECTIVE_SETTINGS = (("beta", 1.0, "--beta"), ("kl_warmup", 0.0, "--kl-warmup"),
                      ("free_bits", 0.0, "--free-bits"), ("iwae_k", 5, "--iwae-k"),
                      ("alpha", None, "--alpha"), ("consistency", None, "--consistency"),
                      ("gamma", None, "--gamma"), ("capacity_max", None, "--capacity-max"),
                      ("capacity_epochs", None, "--capacity-epochs"), ("tc_estimator", None, "--tc-estimator"),
                      ("dip_lambda_od", None, "--dip-lambda-od"), ("dip_lambda_d", None, "--dip-lambda-d"))


@dataclass
class ObjectiveOutput:
    """Per-batch results. ``loss`` is what is minimised; the rest are means per example, in nats."""

    loss: torch.Tensor  # scalar
    reconstruction: torch.Tensor  # scalar, E_q[-log p(x | z, c)]
    kl: torch.Tensor  # scalar, KL(q || p) (unweighted)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # named extra scalars, logged

    @property
    def neg_elbo(self) -> torch.Tensor:
        return self.reconstruction + self.kl


class Objective:
    """Base class. ``uses`` names the training settings (of :data:`OBJECTIVE_SETTINGS`) it reads."""

    name: str = "?"
    uses: tuple[str, ...] = ()
    # True: the trainer adds labelled rows to every batch of data with missing labels (semi-supervised)
    labelled_batches: bool = False
    model_class: str | None = None  # the model class the objective trains (None: any)

    @classmethod
    def from_config(cls, config) -> Objective:
        """Build from a TrainConfig (or anything with its attributes); a setting the objective does
        not read must keep its neutral value, so that a flag is never silently ignored."""
        for key, neutral, flag in OBJECTIVE_SETTINGS:
            if key not in cls.uses and getattr(config, key, neutral) != neutral:
                users = [n for n, o in OBJECTIVES.items() if key in o.uses]
                raise CvaeError(f"{flag} does not apply to --objective {cls.name} (it is read by "
                                f"{', '.join(users) or 'no objective'}); leave it out or change the objective")
        neutral_of = {key: neutral for key, neutral, _ in OBJECTIVE_SETTINGS}
        return cls(**{key: getattr(config, key, neutral_of.get(key)) for key in cls.uses})

    # True for an objective whose loss is the reconstruction term plus a function of the codes alone,
    # given by latent_loss: the fused step (cvae.fused) then computes the networks' part written out and
    # this part by autograd on the (B, D) codes
    latent_form: bool = False

    def __call__(self, model, x: torch.Tensor, c: torch.Tensor | None, *, progress: float = 0.0) -> ObjectiveOutput:
        if not self.latent_form:
            raise NotImplementedError
        out = model(x, c)
        if out.z.dim() != 2:
            raise CvaeError(f"--objective {self.name} needs one code per example")
        rec = -out.px.log_prob(x).float().mean()
        kl = out.kl().float()
        penalty, terms = self.latent_loss(out.z.float(), out.qz.mu.float(), out.qz.logvar.float(),
                                          out.log_prior().float(), kl, progress=progress)
        loss, terms = with_auxiliary(out, rec + penalty, terms)
        return ObjectiveOutput(loss=loss, reconstruction=rec, kl=kl.mean(), terms=terms)

    def latent_loss(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, log_pz: torch.Tensor,
                    kl: torch.Tensor, *, progress: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """For a ``latent_form`` objective: the loss less the reconstruction term (a scalar, a mean over
        the batch) and its named terms, from the codes z, the posteriors' means and log variances (B, D),
        and per example log p(z) and KL(q(z | x) || p(z)) (B,)."""
        raise NotImplementedError

    def schedule(self, progress: float) -> dict[str, float]:
        """Scheduled values at ``progress`` epochs (logged once per epoch)."""
        return {}

    def attach(self, n_train: int, n_labelled: int) -> dict:
        """Called once before training with the number of training examples and of those with every
        label; an objective whose weights depend on them sets them here. Returns the settings it
        resolved (recorded in config.json)."""
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors of the objective's own trained state (an auxiliary network and its optimizer),
        saved with the trainer state so that --resume goes on exactly; none by default."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` gave."""

    def bound(self, model, x: torch.Tensor, c: torch.Tensor | None) -> ObjectiveOutput:
        """The figures reported for held-out data: the negative ELBO and its parts."""
        from .evidence import elbo

        with torch.no_grad():
            return elbo(model, x, c)


def with_auxiliary(out, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The loss plus the model's auxiliary losses (:attr:`ModelOutput.auxiliary`, e.g. the sequence
    model's prefix predictor), each also logged as a term."""
    for name, value in out.auxiliary.items():
        loss = loss + value
        terms[name] = value.detach()
    return loss, terms


def build_objective(name: str, config) -> Objective:
    return OBJECTIVES.get(name).from_config(config)


def kl_warmup(epoch: float, warmup_epochs: float) -> float:
    """Linear KL annealing from 0 to 1 over ``warmup_epochs`` (Bowman et al. 2016); 1 when 0."""
    if warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch / warmup_epochs)))
