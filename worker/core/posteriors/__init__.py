"""Beta click-rate posteriors, segment-rate priors, tiers and Thompson sampling (DESIGN §6)."""

from worker.core.posteriors.beta_posterior import BetaPosterior
from worker.core.posteriors.posterior_store import POPULATION, TIERS, PosteriorStore
from worker.core.posteriors.thompson_sampler import ThompsonSampler

__all__ = ["POPULATION", "TIERS", "BetaPosterior", "PosteriorStore", "ThompsonSampler"]
