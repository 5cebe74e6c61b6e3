"""Recommendation from implicit feedback: Mult-VAE / Mult-DAE (Liang et al. 2018), conditioned on the
user's attributes when given, with the paper's protocol, EASE and popularity baselines."""

from .apps import load_recommender, recommend
from .data import Interactions, Splits, load_interactions, split
from .metrics import (
    ease_scorer,
    ease_weights,
    evaluate_scorer,
    group_popularity_scorer,
    model_scorer,
    popularity_scorer,
)
from .train import RecommenderConfig, train_recommender

__all__ = ["Interactions", "RecommenderConfig", "Splits", "ease_scorer", "ease_weights", "evaluate_scorer",
           "group_popularity_scorer", "load_interactions", "load_recommender", "model_scorer", "popularity_scorer",
           "recommend", "split", "train_recommender"]
