"""A sequence VAE for molecules (SMILES / SELFIES) and text, conditioned on c (Bowman et al. 2016;
Gomez-Bombarelli et al. 2018; Lim et al. 2018 for several molecular properties at once).

    x        token ids (B, L): the sequence, <eos>, then <pad> (cvae.tokens)
    encoder  embeddings -> bidirectional GRU (packed: padding unseen) -> [h_fwd, h_bwd, c] -> q(z | x, c)
    decoder  h_0 = tanh(W [z, c]); at step t the GRU reads [embed(x_{t-1}), z, c] and gives the logits
             of x_t (autoregressive: teacher forcing in training, greedy / sampled / beam decoding after)
    prior    p(z | c), a registered part (the conditional Gaussian when there is a condition)

``p_x(z, c)`` is a :class:`TokenSequence`: ``log_prob(x)`` runs the decoder on x shifted by one
(teacher forcing), ``mean`` decodes greedily, ``sample()`` draws token by token, ``beam(k)`` keeps
the k most probable prefixes. Word dropout as Bowman et al. define it (the decoder's input tokens,
not their embeddings, replaced by <unk> with probability ``word_dropout`` in training) weakens the
decoder so that z is used; KL annealing and free bits are the objective's (``--kl-warmup``,
``--free-bits``).

Classifier-free guidance (Ho & Salimans 2022; Sanchez et al. 2023 for language models): trained with
``condition_dropout`` p, the decoder sees, for a share p of the examples, no condition (c set to 0 and
a presence flag, one more decoder input, set to 0), so it also learns p(x | z) beside p(x | z, c). At
decoding, ``guidance`` w combines the two at every step: log-probabilities (1 + w) log p(x_t | ., c)
- w log p(x_t | ., none), renormalised; w = 0 is the plain conditional decoder. ``guidance`` in the
config is the run's default weight (``cvae sample`` / ``evaluate --guidance`` override it).

Steering by a prefix predictor (FUDGE, Yang & Klein 2021: "future discriminators"): trained with
``prefix_predictor``, a separate small GRU reads the tokens (not z, not c) and predicts, after every
prefix, the condition of the whole sequence: a Gaussian (mean and log variance, standardised units)
per continuous attribute, class logits per categorical one. It is trained beside the ELBO (its loss
is the model's auxiliary term ``prefix_nll``: the negative log-likelihood of the true condition,
averaged over the prefixes of each sequence) and shares no parameter with the VAE. At decoding with
``steer`` s > 0, each step keeps the ``STEER_TOP_K`` most probable next tokens and adds s log p(c |
prefix + token) to their log-probabilities: tokens that lead towards the requested condition are
preferred, most sharply near the end of a sequence, where the predictor is sure. ``steer`` in the
config is the run's default weight (``cvae sample`` / ``evaluate --steer`` override it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import DiagonalGaussian
from ..errors import CvaeError
from ..likelihoods import LIKELIHOODS
from ..priors import build_prior
from ..tokens import BOS, EOS, MOLECULAR, PAD, SPECIALS, UNK, Tokenizer
from .base import MODELS, ModelOutput, VAEModel, check_positive, flatten_samples
from .config import ModelConfig, check_weight

# Steering considers the k most probable next tokens of each step (FUDGE's "precondition top-k").
STEER_TOP_K = 10
# How new sequences are generated unless asked otherwise (cvae sample and evaluate, the Python API, the web
# page): every token drawn at temperature 0.5. Measured (README, "The default decoding"): greedy decoding
# repeated 29% of 4,000 MOSES molecules asked for at four logP values, this 1%, at the same logP control.
# Reconstructions, transfers and interpolations stay greedy.
GENERATE_DECODE = "sample"
GENERATE_TOKEN_TEMPERATURE = 0.5


@dataclass
class SeqVAEConfig(ModelConfig):
    """:class:`ModelConfig` plus the tokeniser (kind and vocabulary) and the recurrent network's
    settings; ``hidden[0]`` is the GRU width, ``data_shape`` is (max_length + 1,)."""

    model_class: str = "seqvae"
    tokenizer: dict = field(default_factory=lambda: {"kind": "char", "tokens": list(SPECIALS)})
    embed_dim: int = 64
    word_dropout: float = 0.0  # Bowman et al. 2016: decoder input tokens replaced by <unk>, training only
    prefix_predictor: bool = False  # train a predictor of the condition from each prefix (steering, FUDGE)
    steer: float = 0.0  # the run's default steering weight (needs prefix_predictor)

    def __post_init__(self):
        if not isinstance(self.tokenizer, dict) or set(self.tokenizer) != {"kind", "tokens"}:
            raise CvaeError("model setting tokenizer must be a mapping with kind and tokens")
        Tokenizer(**self.tokenizer)  # checks the kind and the vocabulary
        if isinstance(self.embed_dim, bool) or not isinstance(self.embed_dim, int) or self.embed_dim < 1:
            raise CvaeError(f"model setting embed_dim must be a whole number of at least 1, got {self.embed_dim!r}")
        v = self.word_dropout
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise CvaeError(f"--word-dropout must be a number from 0 to below 1, got {v!r}")
        self.word_dropout = float(v)
        if not isinstance(self.prefix_predictor, bool):
            raise CvaeError(f"model setting prefix_predictor must be true or false, got {self.prefix_predictor!r}")
        check_weight(self.steer, "--steer")
        self.steer = float(self.steer)
        if self.steer and not self.prefix_predictor:
            raise CvaeError("model setting steer needs prefix_predictor true (the network that steers)")
        if self.likelihood != "categorical":
            raise CvaeError(f"the sequence model's likelihood is categorical (one token per position), "
                            f"not {self.likelihood!r}; leave --likelihood out")
        super().__post_init__()
        if len(self.data_shape) != 1:
            raise CvaeError(f"the sequence model reads token rows (one dimension), got data_shape {self.data_shape}")


@MODELS.register("seqvae")
class SeqVAE(VAEModel):
    """GRU encoder, autoregressive GRU decoder conditioned on z and c."""

    config_class = SeqVAEConfig
    guidable = True
    guided_by_likelihood = False  # each step's token distribution is guided (_guided), not a likelihood's
    steerable = True  # a prefix predictor steers decoding (--steer); conditioned runs are steered by default
    log_active_units = True  # the trainer logs the validation split's active units each epoch
    # training settings this class sets when the user leaves them out, against posterior collapse (README,
    # "Against posterior collapse, by default"). Molecules: without them a QM9 run's KL fell to 0.03 nats
    # and a third of its samples repeated; on MOSES (80,000 molecules, cvae sample at logP 1-4) these
    # met issue 13's goals (logP MAE 0.392, rho 0.918, 99.0% distinct), where free bits 0.2 / 0.5 with
    # word dropout 0.2 / 0.3 lost logP control (MAE 0.426 / 0.494) and reconstructed no more on MOSES (0% /
    # 3.4%). Text (characters or words): free bits 0.5 lowered the ChatterBot conditional accuracy from
    # 0.86 to 0.67, so text keeps the settings the text benchmark measured
    molecule_defaults = {"kl_warmup": 1.0, "free_bits": 0.05, "word_dropout": 0.1}
    text_defaults = {"kl_warmup": 1.0, "free_bits": 0.05, "word_dropout": 0.25}

    @classmethod
    def training_defaults(cls, data) -> dict:
        tokenizer = (data.meta.get("sequences") or {}).get("tokenizer")
        return cls.molecule_defaults if tokenizer in MOLECULAR else cls.text_defaults

    def __init__(self, config: SeqVAEConfig, *, run=None):
        super().__init__(config, run=run)
        self.tokenizer = Tokenizer(**config.tokenizer)
        vocab, emb, width = len(self.tokenizer), config.embed_dim, config.hidden[0]
        latent, cond = config.latent_dim, self.schema.dim
        self.length = config.data_shape[0]
        cond_in = cond + int(self.flagged)
        self.embed = nn.Embedding(vocab, emb, padding_idx=PAD)
        self.encoder = nn.GRU(emb, width, batch_first=True, bidirectional=True)
        self.to_q = nn.Linear(2 * width + cond, 2 * latent)
        self.to_h0 = nn.Linear(latent + cond_in, width)
        self.decoder = nn.GRU(emb + latent + cond_in, width, batch_first=True)
        self.to_logits = nn.Linear(width, vocab)
        self.likelihood = LIKELIHOODS.get("categorical")(config.data_shape, classes=vocab, padding=PAD)
        self.prior = build_prior(config.prior, latent, cond, self, config.prior_options)
        if config.prefix_predictor:
            if not self.schema:
                raise CvaeError("--steer steers generation towards a requested condition, and this run has none; "
                                "leave it out or name the condition columns with --condition")
            # per attribute: class logits, or a Gaussian's mean and log variance (standardised units)
            self.predicted = [len(a.classes) if a.kind == "categorical" else 2 for a in self.schema.attributes]
            self.pred_embed = nn.Embedding(vocab, emb, padding_idx=PAD)
            self.pred_gru = nn.GRU(emb, width, batch_first=True)
            self.pred_head = nn.Linear(width, sum(self.predicted))

    # -- the maths --------------------------------------------------------------------------------
    def q_z(self, x: torch.Tensor, c: torch.Tensor | None = None) -> DiagonalGaussian:
        ids = x.long()
        lengths = (ids != PAD).sum(1).clamp_min(1)
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.encoder(packed)  # (2, B, width): the last state of each direction
        h = torch.cat([h[0], h[1]] + ([c.to(h.dtype)] if c is not None else []), dim=-1)
        mu, logvar = self.to_q(h).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    def p_x(self, z: torch.Tensor, c: torch.Tensor | None = None) -> TokenSequence:
        return TokenSequence(self, z, c)

    def p_x_guided(self, z: torch.Tensor, c: torch.Tensor, guidance: float) -> TokenSequence:
        """p(x | z, c) whose decodings (greedy, sampled, beam) are classifier-free guided with weight w."""
        return TokenSequence(self, z, c, guidance=guidance)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, samples: int | None = None) -> ModelOutput:
        """One reparameterised z per example, or ``samples`` of them (z: (samples, B, latent))."""
        qz = self.q_z(x, c)
        z = qz.rsample() if samples is None else qz.rsample((samples,))
        out = ModelOutput(qz=qz, z=z, px=self.p_x(z, c), c=c, prior=self.prior)
        if self.training and self.config.prefix_predictor and c is not None:
            out.auxiliary["prefix_nll"] = self.prefix_nll(x, c)
        return out

    # -- the prefix predictor (steering) -------------------------------------------------------------
    def prefix_states(self, x: torch.Tensor) -> torch.Tensor:
        """The predictor's state after each prefix x_1..x_t of token rows (B, L): (B, L, width)."""
        out, _ = self.pred_gru(self.pred_embed(x.long()))
        return out

    def condition_log_prob(self, states: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log p(c | prefix) from predictor states (..., width) for condition rows c broadcast to them
        (..., dim), summed over the attributes; a missing value (NaN, or an all-zero class block)
        counts nothing."""
        out = self.pred_head(states).float()
        c = c.float().expand(*out.shape[:-1], c.shape[-1])
        total, i, j = out.new_zeros(out.shape[:-1]), 0, 0
        for a, k in zip(self.schema.attributes, self.predicted):
            head = out[..., i:i + k]
            if a.kind == "categorical":
                total = total + (F.log_softmax(head, dim=-1) * c[..., j:j + k].nan_to_num()).sum(-1)
                j += k
            else:
                mean, logvar = head[..., 0], head[..., 1].clamp(-10, 10)
                target = c[..., j]
                lp = -0.5 * (math.log(2 * math.pi) + logvar + (target.nan_to_num() - mean) ** 2 * torch.exp(-logvar))
                total = total + torch.where(torch.isnan(target), 0.0, lp)
                j += 1
            i += k
        return total

    def prefix_nll(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The predictor's loss: -log p(c | x_1..x_t) averaged over the prefixes of each sequence (up to
        and including <eos>), then over the batch."""
        ids = x.long()
        lp = self.condition_log_prob(self.prefix_states(ids), c.unsqueeze(1))  # (B, L)
        real = (ids != PAD).float()
        return -((lp * real).sum(1) / real.sum(1).clamp_min(1)).mean()

    def _steer(self, logp: torch.Tensor, hp: torch.Tensor, c: torch.Tensor, weight: float):
        """One steered step (FUDGE): of the ``STEER_TOP_K`` most probable next tokens of each row, the
        log-probabilities plus ``weight`` log p(c | prefix + token), renormalised; every other token
        ruled out. Returns them, the candidates (B, K) and the predictor's state after each (B, K, width)."""
        k = min(STEER_TOP_K, logp.shape[-1])
        top, cand = logp.topk(k, dim=-1)
        gru = self.pred_gru  # one GRU cell step for every candidate, written out (gates r, z, n)
        table = F.linear(self.pred_embed.weight, gru.weight_ih_l0, gru.bias_ih_l0)  # (V, 3 width)
        gi = table[cand]  # (B, K, 3 width)
        gh = F.linear(hp, gru.weight_hh_l0, gru.bias_hh_l0).unsqueeze(1)  # (B, 1, 3 width), shared by the K
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r, u = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        states = (1 - u) * torch.tanh(i_n + r * h_n) + u * hp.unsqueeze(1)
        score = top + weight * self.condition_log_prob(states, c.unsqueeze(1))
        steered = torch.full_like(logp, -torch.inf).scatter(-1, cand, score)  # -inf candidates stay -inf
        return F.log_softmax(steered, dim=-1), cand, states

    @staticmethod
    def _chosen_state(cand: torch.Tensor, states: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The predictor's state after the chosen token of each row (a token outside the candidates,
        only <pad> after <eos>, takes the first candidate's: never read)."""
        pos = (cand == token.unsqueeze(1)).float().argmax(1)
        return states[torch.arange(len(token), device=token.device), pos]

    def steer_weight(self, steer: float | None) -> float:
        """The steering weight to decode with: ``steer``, or the run's default when None; refused for a
        run trained without the prefix predictor."""
        if steer is None:
            return self.config.steer
        check_weight(steer, "--steer")
        if steer and not self.config.prefix_predictor:
            raise CvaeError("--steer needs a run trained with a prefix predictor (cvae train ... --steer W); "
                            "retrain with it, or leave --steer out")
        return float(steer)

    # -- strings in, strings out (the user's interface for sequences) ------------------------------------
    @torch.no_grad()
    def sample_strings(self, n: int, condition=None, *, seed: int = 0, temperature: float = 1.0,
                       decode: str = GENERATE_DECODE, beam: int = 5,
                       token_temperature: float = GENERATE_TOKEN_TEMPERATURE,
                       guidance: float | None = None, steer: float | None = None):
        """``n`` strings generated for ``condition`` (z ~ p(z | c) at ``temperature``, then sampled (the
        default), greedy or beam decoding, tokens sampled at ``token_temperature``, classifier-free ``guidance``
        weight and prefix-predictor ``steer`` weight, None: the run's defaults) and the raw condition
        rows (N, A) they were asked for (None unconditioned)."""
        self.check_temperature(temperature)
        n = check_positive("the number of samples", n)
        if not (isinstance(token_temperature, (int, float)) and 0 < token_temperature <= 10):
            raise CvaeError(f"--token-temperature must be a number above 0 and at most 10, got {token_temperature!r}")
        guidance, steer = self.guidance_weight(guidance), self.steer_weight(steer)
        g = torch.Generator().manual_seed(seed)
        y = self.schema.parse(condition, n) if self.schema else None
        c = self.condition_vector(y, n) if self.schema else self.condition_vector(condition, n)
        n = len(c) if c is not None else n
        out = []
        for i in range(0, n, 1000):
            cb = c[i:i + 1000] if c is not None else None
            z = self.sample_z(len(cb) if cb is not None else min(1000, n - i), cb, g, temperature)
            out.append(self.decode_tokens(z, cb, how=decode, beam=beam, generator=g, temperature=token_temperature,
                                          guidance=guidance, steer=steer))
        return self.tokenizer.decode(torch.cat(out).cpu().numpy()), y

    @torch.no_grad()
    def encode_strings(self, texts, condition=None, *, where: str = "the input", names=None):
        """q(z | x, c) of strings (tokenised with the run's vocabulary: an unseen token or a string
        longer than the model's maximum is an error that names it, by ``names[i]`` when given)."""
        ids = self.tokenizer.encode(list(texts), self.length, where=where, names=names)
        return self.encode(torch.from_numpy(ids).float(), condition)

    # -- the decoder, step by step or teacher-forced ----------------------------------------------------
    def _context(self, z: torch.Tensor, c: torch.Tensor | None, present: bool = True) -> torch.Tensor:
        """The decoder's context [z, c] ([z, c, 1] with condition dropout; [z, 0, 0] for "no condition")."""
        if c is None:
            return z
        c = c.to(z.dtype) if present else torch.zeros_like(c, dtype=z.dtype)
        if self.flagged:
            c = torch.cat([c, torch.full_like(c[:, :1], float(present))], dim=-1)
        return torch.cat([z, c], dim=-1)

    def _drop_condition(self, zc: torch.Tensor) -> torch.Tensor:
        """Training with condition dropout: a share of the rows lose c (and their presence flag)."""
        p = self.config.condition_dropout
        if not (self.training and self.flagged and p > 0):
            return zc
        keep = (torch.rand(zc.shape[0], 1, device=zc.device) >= p).to(zc.dtype)
        latent = self.config.latent_dim
        return torch.cat([zc[:, :latent], zc[:, latent:] * keep], dim=-1)

    def _start(self, zc: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.to_h0(zc)).unsqueeze(0)  # (1, B, width)

    def teacher_forced_logits(self, x: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) of every position given the true previous tokens (word dropout in training)."""
        ids = x.long()
        inputs = torch.cat([torch.full_like(ids[:, :1], BOS), ids[:, :-1]], dim=1)
        p = self.config.word_dropout
        if self.training and p > 0:
            drop = (torch.rand(inputs.shape, device=inputs.device) < p) & (inputs != PAD)
            drop[:, 0] = False  # <bos> stays: it says where the sequence starts
            inputs = inputs.masked_fill(drop, UNK)
        zc = self._drop_condition(zc)
        emb = self.embed(inputs)
        steps = torch.cat([emb, zc.unsqueeze(1).expand(-1, ids.shape[1], -1).to(emb.dtype)], dim=-1)
        out, _ = self.decoder(steps, self._start(zc))
        return self._allowed(self.to_logits(out))

    @staticmethod
    def _allowed(logits: torch.Tensor) -> torch.Tensor:
        """The tokens that never follow a prefix (<pad>, <bos>, <unk>) get probability 0."""
        logits = logits.float().clone()
        logits[..., [PAD, BOS, UNK]] = -torch.inf
        return logits

    def step(self, token: torch.Tensor, zc: torch.Tensor, h: torch.Tensor):
        """One decoding step: log-probabilities of the next token (B, V) and the new state. The tokens
        that never follow a prefix (<pad>, <bos>, <unk>) are ruled out."""
        inp = torch.cat([self.embed(token), zc], dim=-1).unsqueeze(1)
        out, h = self.decoder(inp, h)
        return F.log_softmax(self._allowed(self.to_logits(out[:, 0])), dim=-1), h

    def _guided(self, logp: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance: rows [conditioned; unconditioned] (2B, V) -> (B, V) log-probabilities
        of (1 + w) log p(. | c) - w log p(. | none), renormalised (ruled-out tokens stay ruled out)."""
        if not guidance:
            return logp
        cond, none = logp.chunk(2)
        mixed = torch.where(torch.isfinite(cond), (1 + guidance) * cond - guidance * none, -torch.inf)
        return F.log_softmax(mixed, dim=-1)

    def _decoder_contexts(self, z: torch.Tensor, c: torch.Tensor | None, guidance: float) -> torch.Tensor:
        """[z, c] per code, followed, when guiding, by the same codes without the condition."""
        zc = self._context(z, c)
        return torch.cat([zc, self._context(z, c, present=False)]) if guidance else zc

    def decode_tokens(self, z: torch.Tensor, c: torch.Tensor | None, *, how: str = "greedy", beam: int = 5,
                      generator: torch.Generator | None = None, temperature: float = 1.0,
                      guidance: float = 0.0, steer: float = 0.0) -> torch.Tensor:
        """Token ids (B, L) for codes (B, latent): greedy, sampled (at ``temperature``) or beam search,
        each step's distribution classifier-free guided with weight ``guidance`` and steered by the
        prefix predictor with weight ``steer`` (0: none)."""
        guidance = guidance if c is not None else 0.0
        steer = steer if c is not None else 0.0
        if how == "beam":
            return self._beam(z, c, beam, guidance, steer)
        if how not in ("greedy", "sample"):
            raise CvaeError(f"decoding must be greedy, sample or beam, got {how!r}")
        zc = self._decoder_contexts(z, c, guidance)
        h = self._start(zc)
        n, length = len(z), self.length
        out = torch.full((n, length), PAD, dtype=torch.long, device=z.device)
        token = torch.full((n,), BOS, dtype=torch.long, device=z.device)
        done = torch.zeros(n, dtype=torch.bool, device=z.device)
        hp = z.new_zeros(n, self.config.hidden[0]) if steer else None  # the prefix predictor's state
        for t in range(length):
            logp, h = self.step(token.repeat(2) if guidance else token, zc, h)
            logp = self._guided(logp, guidance)
            if t == 0:  # no sequence is empty (none in training was): <eos> cannot come first
                logp = logp.index_fill(-1, torch.tensor([EOS], device=logp.device), -torch.inf)
            if steer and t < length - 1:
                logp, cand, states = self._steer(logp, hp, c, steer)
            if t == length - 1:  # the last position can only end the sequence
                token = torch.full_like(token, EOS)
            elif how == "greedy":
                token = logp.argmax(-1)
            else:
                probs = F.softmax(logp / max(temperature, 1e-6), dim=-1).cpu()
                token = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(z.device)
            if steer and t < length - 1:
                hp = self._chosen_state(cand, states, token)
            out[:, t] = torch.where(done, torch.full_like(token, PAD), token)
            done |= token == EOS
            if bool(done.all()):
                break
        return out

    def _beam(self, z: torch.Tensor, c: torch.Tensor | None, width: int, guidance: float = 0.0,
              steer: float = 0.0) -> torch.Tensor:
        """Beam search: the ``width`` most probable prefixes per code; returns the most probable
        finished sequence (sum of token log-probabilities, guided and steered ones when asked)."""
        if not isinstance(width, int) or width < 1:
            raise CvaeError(f"--beam must be a whole number of at least 1, got {width!r}")
        n, k, length = len(z), width, self.length
        zc = self._decoder_contexts(z.repeat_interleave(k, dim=0), c.repeat_interleave(k, dim=0)
                                    if c is not None else None, guidance)  # (n k, .), twice when guiding
        h = self._start(zc)
        token = torch.full((n * k,), BOS, dtype=torch.long, device=z.device)
        scores = torch.full((n, k), -torch.inf, device=z.device)
        scores[:, 0] = 0.0  # one live beam at the start
        seqs = torch.zeros((n * k, 0), dtype=torch.long, device=z.device)
        done = torch.zeros(n * k, dtype=torch.bool, device=z.device)
        target = c.repeat_interleave(k, dim=0) if steer else None
        hp = z.new_zeros(n * k, self.config.hidden[0]) if steer else None
        for t in range(length):
            logp, h = self.step(token.repeat(2) if guidance else token, zc, h)
            logp = self._guided(logp, guidance)
            if t == 0:  # no sequence is empty
                logp = logp.index_fill(-1, torch.tensor([EOS], device=logp.device), -torch.inf)
            if steer and t < length - 1:
                logp, cand, states = self._steer(logp, hp, target, steer)
            if t == length - 1:
                logp = torch.where(torch.arange(logp.shape[1], device=z.device) == EOS, 0.0, -torch.inf).expand_as(logp)
            finished = torch.full_like(logp, -torch.inf)
            finished[:, PAD] = 0.0  # a finished beam only pads, at no cost
            logp = torch.where(done.unsqueeze(1), finished, logp)
            vocab = logp.shape[1]
            total = (scores.reshape(-1, 1) + logp).reshape(n, k * vocab)
            scores, idx = total.topk(k, dim=1)
            rows = (torch.arange(n, device=z.device).unsqueeze(1) * k + idx // vocab).reshape(-1)
            token = (idx % vocab).reshape(-1)
            h = h[:, torch.cat([rows, rows + n * k])] if guidance else h[:, rows]
            if steer and t < length - 1:
                hp = self._chosen_state(cand[rows], states[rows], token)
            seqs, done = torch.cat([seqs[rows], token.unsqueeze(1)], dim=1), done[rows]
            done = done | (token == EOS) | (token == PAD)
            if bool(done.all()):
                break
        best = scores.argmax(1)
        seqs = seqs.reshape(n, k, -1)[torch.arange(n, device=z.device), best]
        return F.pad(seqs, (0, length - seqs.shape[1]), value=PAD)


class TokenSequence:
    """p(x | z, c) of the autoregressive decoder, for codes with any leading sample dimensions."""

    def __init__(self, model: SeqVAE, z: torch.Tensor, c: torch.Tensor | None, *, guidance: float = 0.0,
                 steer: float | None = None):
        """Decodings are guided with weight ``guidance`` (0: none; ``model.p_x_guided`` sets it) and
        steered with weight ``steer`` (None: the run's default)."""
        self.model = model
        self.z, self.c, self.lead = flatten_samples(z, c)
        self.decoding = {"guidance": guidance, "steer": model.config.steer if steer is None else steer}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z, c) per example (and sample): teacher-forced, padding excluded."""
        ids = x.long()
        if len(ids) != len(self.z):  # several codes per example: (S, B, latent) against (B, L)
            ids = ids.expand(*self.lead, ids.shape[-1]).reshape(-1, ids.shape[-1])
        logits = self.model.teacher_forced_logits(ids, self.model._context(self.z, self.c))
        return self.model.likelihood(logits.transpose(-1, -2)).log_prob(ids).reshape(self.lead)

    def _shaped(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.float().reshape(*self.lead, ids.shape[-1])

    @property
    def mean(self) -> torch.Tensor:
        """Greedy decoding (the most probable token at each step), as float ids."""
        return self._shaped(self.model.decode_tokens(self.z, self.c, how="greedy", **self.decoding))

    def sample(self, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        return self._shaped(self.model.decode_tokens(self.z, self.c, how="sample", generator=generator,
                                                     temperature=temperature, **self.decoding))

    def beam(self, width: int = 5) -> torch.Tensor:
        return self._shaped(self.model.decode_tokens(self.z, self.c, how="beam", beam=width,
                                                     **self.decoding))
