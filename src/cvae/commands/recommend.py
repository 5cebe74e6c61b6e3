"""cvae recommend train | cvae recommend RUN --user-history FILE."""

from __future__ import annotations

import argparse
from dataclasses import fields

HELP = {
    "data": "ml-100k (MovieLens-100K from the recbole package's files), a CSV/TSV of (user, item[, rating, "
            "timestamp]) rows, or a .npz sparse matrix (scipy.sparse.save_npz; rows users, columns items)",
    "data_dir": "where ml-100k/ml-100k.inter is looked up first (then $CVAE_DATA, ~/.cache/cvae, the recbole package)",
    "user_attributes": "a CSV of users' attributes: a user column, then one column per attribute (ml-100k: its own)",
    "condition": "attributes to condition on, e.g. age:continuous,gender,occupation (ml-100k's default); none "
                 "(default: every column of --user-attributes)",
    "min_rating": "keep rows rated at least this (ml-100k: 4, the paper's threshold); default: every row",
    "min_user_interactions": "keep users with at least this many interactions (default 5)",
    "heldout_users": "share (< 1) or number (>= 1) of users held out for validation, and again for test (default 0.1)",
    "heldout_fraction": "share of each held-out user's items scored; the rest are folded in (default 0.2)",
    "folds": "K >= 3: cut the users into K folds instead; --fold's users are the test users, the next fold's "
             "validation (run every --fold 0..K-1 to test each user once)",
    "fold": "the test fold with --folds (0 to K - 1)",
    "model": "multvae (default) | multdae (a deterministic encoder, no KL) | ease (closed form, Steck 2019)",
    "prior": "standard N(0, I) (the paper; the default without attributes) | conditional p(z | attributes) (the "
             "default with attributes) | any registered prior",
    "condition_in": "where the attributes enter: both (encoder and decoder) | decoder (the default)",
    "condition_embedding": "width of a learned tanh embedding of the attributes (0: the raw codes)",
    "condition_dropout": "training: share of users whose attributes are blanked, so the model also learns without",
    "truncate_share": "training: share of users whose input (not target) is cut to 1..--truncate-items random "
                      "items, so the model sees cold-start-like users",
    "truncate_items": "the most items a truncated training input keeps (default 5)",
    "history_dropout": "training: share of users whose whole input (not target) is blanked, so the decoder learns "
                       "to recommend from the attributes alone (DropoutNet, Volkovs et al. 2017)",
    "condition_bias": "k > 0: add a learned item bias per attribute value, weighted k / (k + items in the user's "
                      "history): a user with few items leans on their group (0: off)",
    "prior_fold_in": "k > 0, scoring: the user's z pulled towards the prior's mean for their attributes, "
                     "(n mu_q + k mu_p) / (n + k), n their items (with --prior conditional; 0: off)",
    "popularity_mix": "k > 0, scoring: blend the model's item probabilities with the popularity within the user's "
                      "attribute group (global popularity without attributes), weight k / (k + items in the history)",
    "ease_lambda": "--model ease: its L2 weight (default: the best on validation NDCG@100 of a grid 10..5000)",
    "hidden": "hidden widths (default 600)", "latent_dim": "size of z (default 200)",
    "condition_at": "MLP layer where the condition joins (-1: every layer, the default; 0: the input)",
    "dropout": "dropout on the normalised input (default 0.5)",
    "beta": "the KL weight the annealing ends at (default 1; the best epoch on validation NDCG@100 is kept)",
    "anneal_steps": "steps over which the KL weight rises by 1 (the paper: 200000); default: the whole run",
    "epochs": "epochs (default 200)", "batch_size": "users per step (default 500)",
    "lr": "Adam learning rate (default 1e-3)",
    "weight_decay": "Adam weight decay (default 0 for multvae, 4e-5 for multdae as in the paper's code)",
    "eval_every": "epochs between validation passes", "seed": "seed of the split, the weights and the batches",
    "device": "cpu | cuda | cuda:N", "out": "the run folder (default runs/DATA-MODEL)",
    "overwrite": "replace an existing run in --out", "progress": "show a progress bar",
}


class _Dispatch:
    """``cvae recommend train ...`` goes to the training parser; ``cvae recommend RUN ...`` to the
    recommending one (a run folder may not be named ``train``)."""

    def __init__(self, use, actions: dict):
        self.use, self.actions = use, actions
        use.parse_known_args = self.parse_known_args
        self._own = type(use).parse_known_args.__get__(use)

    def parse_known_args(self, args=None, namespace=None):
        args = list(args or [])
        if args and args[0] in self.actions:
            return self.actions[args[0]].parse_known_args(args[1:], namespace)
        return self._own(args, namespace)


def add_parsers(sub) -> None:
    from ..recommend.config import RecommenderConfig

    use = sub.add_parser(
        "recommend", help="recommend items with a Mult-VAE run; `cvae recommend train` trains one",
        description="cvae recommend RUN --user-history FILE --top 20 -o recs.csv   recommends items; "
                    "cvae recommend train --data ml-100k ...   trains Mult-VAE / Mult-DAE (see `cvae recommend "
                    "train --help`).")
    use.add_argument("run", help="the run folder (or `train` to train one)")
    use.add_argument("--user-history",
                     help="a CSV of (user, item[, rating]) rows: the items each user has interacted with (leave it out "
                          "to recommend for new users of --user-attributes from their attributes alone)")
    use.add_argument("--user-attributes", help="a CSV of the users' attributes (a conditioned model needs them)")
    use.add_argument("--top", type=int, default=20, help="items per user (default 20)")
    use.add_argument("-o", "--output", required=True, help="a .csv: user, rank, item, score (the model's probability)")
    use.set_defaults(func=cmd_recommend)

    parser_class = type(use)
    train = parser_class(prog="cvae recommend train", argument_default=argparse.SUPPRESS,
                         description="Train Mult-VAE or Mult-DAE (Liang et al. 2018) on interaction data, with the "
                                     "paper's protocol: held-out users, 80% of their items folded in, 20% scored.")
    for f in fields(RecommenderConfig):
        flag = "--" + f.name.replace("_", "-")
        t = str(f.type)
        if t.startswith("bool"):
            train.add_argument(flag, action=argparse.BooleanOptionalAction, help=HELP.get(f.name))
        elif f.name == "hidden":
            train.add_argument(flag, type=_widths, metavar="W,W", help=HELP.get(f.name))
        else:
            kind = int if t.startswith("int") else float if t.startswith("float") else str
            train.add_argument(flag, type=kind, metavar=f.name.upper(), help=HELP.get(f.name))
    train.add_argument("--resume", action="store_true",
                       help="go on with the run in --out from its last epoch (exactly: weights, optimizer, random "
                            "states); only --epochs, --eval-every, --device, --data-dir and --progress may change")
    train.set_defaults(func=cmd_train, command="recommend")
    _Dispatch(use, {"train": train})


def _widths(text: str) -> list[int]:
    try:
        out = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers such as 600 or 600,200") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give widths of at least 1, such as 600")
    return out


def cmd_train(args) -> int:
    from ..recommend.config import RecommenderConfig
    from ..recommend.train import train_recommender

    given = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(RecommenderConfig)}}
    result = train_recommender(resume=getattr(args, "resume", False), **given)
    s, meta = result.summary, result.splits.meta
    users = (f"{meta['train_users']:,} training users, {meta['val_users']:,} validation, {meta['test_users']:,} test; "
             f"{meta['model_items']:,} items")
    if "ease_lambda" in s:
        print(f"run folder: {result.run_dir}  (EASE; {users})")
        print(f"  kept lambda {s['ease_lambda']:g} (best validation NDCG@100 of {len(s['lambdas_tried'])} tried)")
    else:
        print(f"run folder: {result.run_dir}  ({users}; {s['seconds_per_epoch']:.2f} s per epoch)")
        print(f"  kept epoch {s['best_epoch']} (best validation NDCG@100; KL weight {s['kl_weight_at_best_epoch']:.3g})")
    for split in ("val", "test"):
        v = s[split]
        print(f"  {split:5s} " + "  ".join(f"{_NAMES[k.split('@')[0]]}@{k.split('@')[1]} {m['mean']:.4f} ± {_se(m['se'])}"
                                          for k, m in v.items()) + f"  ({next(iter(v.values()))['users']} users)")
    return 0


_NAMES = {"ndcg": "NDCG", "recall": "Recall"}


def _se(se) -> str:
    return "n/a (1 user)" if se is None else f"{se:.4f}"


def cmd_recommend(args) -> int:
    from ..recommend.apps import recommend_file

    path, users, _ = recommend_file(args.run, args.user_history, args.output, top=args.top,
                                    user_attributes=args.user_attributes)
    new = " new users, recommended from their attributes alone" if args.user_history is None else " users"
    from ..recommend.train import read_items

    count = len(read_items(args.run)[0])
    top = f"top {args.top}" if args.top < count else f"every item not seen (--top {args.top}; the model knows {count:,})"
    print(f"wrote {path} ({users:,}{new}, {top})")
    return 0
