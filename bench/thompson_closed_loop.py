"""Closed-loop exploration benchmark: Thompson sampling on PosteriorStore vs baselines.

A simulated world of users, segments and arms (e.g. genres). Each round one user arrives —
sometimes a brand-new one — the policy shows one arm, the user clicks with their true
probability for that arm, and the feedback updates the policy's posteriors at once.

World (per seed):
  - ``K`` arms with base CTRs around 4 %; ``G`` segments, each with its own taste: the
    segment-arm mean is ``sigmoid(logit(arm_ctr) + segment_offset + N(0, taste_sd))``, so the
    best arm differs by segment.
  - a user's true CTR on an arm is ``sigmoid(logit(m) + base_u + taste_ua)`` around its
    segment-arm mean ``m``: ``base_u ~ N(0, user_sd)`` moves all arms together (some users
    click more), ``taste_ua ~ N(0, user_arm_sd)`` is the personal taste only per-user
    learning can find (as in ``worker/sim``'s ``user_arm_logit_sd``).
  - ``initial_users`` users exist at the start; each round, with probability ``new_share``,
    a new user arrives (and is the one served), otherwise a uniformly chosen existing user.

Policies (all see the same users and the same click randomness — common random numbers —
so differences are due to the policy):
  - ``thompson``: ``ThompsonSampler`` on ``PosteriorStore`` (segment-rate priors, s = 10);
  - ``greedy``: the arm with the highest posterior mean in the same kind of store;
  - ``thompson_flat`` / ``greedy_flat``: the same rules with per-(user, arm) Beta(1, 1);
  - ``random``; ``oracle`` (the user's truly best arm).

Reported: expected cumulative regret (Σ best CTR − chosen CTR) at checkpoints, and the
expected CTR of new users' first ``k`` interactions by quarter of the run (do new users
start well, and does that improve as the segment rates are learned?). Mean ± sd over seeds.

Run: ``.venv/bin/python bench/thompson_closed_loop.py [--rounds N] [--seeds S] [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.core.posteriors import PosteriorStore, ThompsonSampler

ARM_CTR = (0.025, 0.03, 0.035, 0.04, 0.045, 0.05)
SEGMENTS = ("s0", "s1", "s2", "s3")
POLICIES = ("thompson", "greedy", "thompson_flat", "greedy_flat", "random", "oracle")


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class World:
    """One seed's users, their arrival order and the click randomness."""

    ctr: np.ndarray  # (n_users, K) true click probability
    segment: np.ndarray  # (n_users,) segment index
    user_seq: np.ndarray  # (rounds,) user index served at each round
    is_new: np.ndarray  # (n_users,) arrived during the run
    u: np.ndarray  # (rounds,) uniform draw: click iff u < ctr[user, arm]


def make_world(
    seed: int,
    rounds: int,
    *,
    initial_users: int = 300,
    new_share: float = 0.03,
    taste_sd: float = 0.5,
    user_sd: float = 0.5,
    user_arm_sd: float = 0.3,
) -> World:
    rng = np.random.default_rng(seed)
    k, g = len(ARM_CTR), len(SEGMENTS)
    seg_offset = rng.normal(0.0, 0.3, g)
    seg_arm = _sigmoid(
        _logit(np.array(ARM_CTR))[None, :] + seg_offset[:, None] + rng.normal(0, taste_sd, (g, k))
    )
    arrivals = rng.uniform(size=rounds) < new_share
    n_users = initial_users + int(arrivals.sum())
    segment = rng.integers(0, g, n_users)
    z = (
        _logit(seg_arm[segment])
        + rng.normal(0.0, user_sd, (n_users, 1))
        + rng.normal(0.0, user_arm_sd, (n_users, k))
    )
    ctr = _sigmoid(z)
    user_seq = np.empty(rounds, dtype=np.int64)
    known = initial_users
    picks = rng.uniform(size=rounds)
    for t in range(rounds):
        if arrivals[t]:
            user_seq[t] = known
            known += 1
        else:
            user_seq[t] = int(picks[t] * known)
    is_new = np.zeros(n_users, dtype=bool)
    is_new[initial_users:] = True
    return World(ctr, segment, user_seq, is_new, rng.uniform(size=rounds))


class Policy:
    name = "policy"

    def choose(self, user: int, seg: str, ts: int) -> int:
        raise NotImplementedError

    def learn(self, user: int, seg: str, arm: int, click: int, ts: int) -> None:
        pass


class StorePolicy(Policy):
    """Thompson or greedy on a PosteriorStore with segment-rate priors."""

    def __init__(self, thompson: bool, rng: np.random.Generator, strength: float) -> None:
        self.name = "thompson" if thompson else "greedy"
        self.store = PosteriorStore(prior_strength=strength, default_rate=0.04)
        self.sampler = ThompsonSampler(self.store)
        self.thompson = thompson
        self.rng = rng
        self.arms = [f"arm{i}" for i in range(len(ARM_CTR))]

    def choose(self, user: int, seg: str, ts: int) -> int:
        uid = f"u{user}"
        if self.thompson:
            return self.arms.index(self.sampler.choose(uid, self.arms, self.rng, seg, ts))
        means = [self.store.posterior(uid, a, seg, ts).mean for a in self.arms]
        return int(np.argmax(np.array(means) + 1e-12 * self.rng.random(len(means))))

    def learn(self, user: int, seg: str, arm: int, click: int, ts: int) -> None:
        self.store.update(f"u{user}", self.arms[arm], seg, click, ts)


class FlatPolicy(Policy):
    """Per-(user, arm) Beta(1, 1): no pooling across users at all."""

    def __init__(self, thompson: bool, rng: np.random.Generator, n_users: int) -> None:
        self.name = "thompson_flat" if thompson else "greedy_flat"
        self.a = np.ones((n_users, len(ARM_CTR)))
        self.b = np.ones((n_users, len(ARM_CTR)))
        self.thompson = thompson
        self.rng = rng

    def choose(self, user: int, seg: str, ts: int) -> int:
        a, b = self.a[user], self.b[user]
        if self.thompson:
            return int(np.argmax(self.rng.beta(a, b)))
        return int(np.argmax(a / (a + b) + 1e-12 * self.rng.random(a.size)))

    def learn(self, user: int, seg: str, arm: int, click: int, ts: int) -> None:
        if click:
            self.a[user, arm] += 1
        else:
            self.b[user, arm] += 1


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(self, user: int, seg: str, ts: int) -> int:
        return int(self.rng.integers(len(ARM_CTR)))


class OraclePolicy(Policy):
    name = "oracle"

    def __init__(self, ctr: np.ndarray) -> None:
        self.best = ctr.argmax(axis=1)

    def choose(self, user: int, seg: str, ts: int) -> int:
        return int(self.best[user])


@dataclass
class Result:
    regret_at: list[float]
    new_ctr_by_phase: list[float]
    new_ctr: float
    ctr: float
    seconds: float
    tiers: dict[str, float] = field(default_factory=dict)


def run_policy(
    policy: Policy, world: World, checkpoints: Sequence[int], first_k: int, phases: int
) -> Result:
    rounds = world.user_seq.size
    best = world.ctr.max(axis=1)
    seen = np.zeros(world.ctr.shape[0], dtype=np.int64)
    regret = np.empty(rounds)
    chosen_ctr = np.empty(rounds)
    early_new = np.zeros(rounds, dtype=bool)
    start = time.perf_counter()
    for t in range(rounds):
        user = int(world.user_seq[t])
        seg = SEGMENTS[world.segment[user]]
        ts = t * 1_000
        arm = policy.choose(user, seg, ts)
        p = world.ctr[user, arm]
        click = int(world.u[t] < p)
        policy.learn(user, seg, arm, click, ts)
        regret[t] = best[user] - p
        chosen_ctr[t] = p
        early_new[t] = world.is_new[user] and seen[user] < first_k
        seen[user] += 1
    seconds = time.perf_counter() - start
    cum = np.cumsum(regret)
    bounds = np.linspace(0, rounds, phases + 1).astype(int)
    by_phase = []
    for lo, hi in itertools.pairwise(bounds):
        sel = early_new[lo:hi]
        by_phase.append(float(chosen_ctr[lo:hi][sel].mean()) if sel.any() else math.nan)
    tiers: dict[str, float] = {}
    if isinstance(policy, StorePolicy):
        store = policy.store
        names = [store.tier(uid) for uid in store.users()]
        tiers = {t: names.count(t) / len(names) for t in ("confident", "moderate_uncertain",
                                                          "high_epistemic")}
    return Result(
        regret_at=[float(cum[c - 1]) for c in checkpoints],
        new_ctr_by_phase=by_phase,
        new_ctr=float(chosen_ctr[early_new].mean()) if early_new.any() else math.nan,
        ctr=float(chosen_ctr.mean()),
        seconds=seconds,
        tiers=tiers,
    )


def make_policy(name: str, seed: int, world: World, strength: float) -> Policy:
    rng = np.random.default_rng([seed, POLICIES.index(name)])
    if name in ("thompson", "greedy"):
        return StorePolicy(name == "thompson", rng, strength)
    if name in ("thompson_flat", "greedy_flat"):
        return FlatPolicy(name == "thompson_flat", rng, world.ctr.shape[0])
    if name == "random":
        return RandomPolicy(rng)
    return OraclePolicy(world.ctr)


def _fmt(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    arr = np.asarray(values, dtype=float) * scale
    if len(arr) == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std(ddof=1):.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=100_000, help="rounds per seed")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds")
    ap.add_argument("--quick", action="store_true", help="20,000 rounds, 3 seeds")
    ap.add_argument("--first-k", type=int, default=10, help="new users' first k interactions")
    ap.add_argument("--strength", type=float, default=10.0, help="segment prior strength s")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset")
    ap.add_argument("--new-share", type=float, default=0.03,
                    help="probability that a round's user is a new arrival")
    ap.add_argument("--initial-users", type=int, default=300, help="users at the start")
    args = ap.parse_args(argv)
    rounds, seeds = (20_000, 3) if args.quick else (args.rounds, args.seeds)
    if rounds < 100 or seeds < 1 or args.initial_users < 1 or not 0 <= args.new_share < 1:
        ap.error("need --rounds >= 100, --seeds >= 1, --initial-users >= 1, 0 <= --new-share < 1")
    names = [p for p in args.policies.split(",") if p]
    unknown = set(names) - set(POLICIES)
    if unknown:
        ap.error(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")
    fractions = (0.1, 0.25, 0.5, 1.0)
    checkpoints = [max(1, int(rounds * f)) for f in fractions]
    phases = 4

    results: dict[str, list[Result]] = {n: [] for n in names}
    n_new = []
    for seed in range(seeds):
        world = make_world(
            seed, rounds, initial_users=args.initial_users, new_share=args.new_share
        )
        n_new.append(int(world.is_new.sum()))
        for name in names:
            results[name].append(
                run_policy(make_policy(name, seed, world, args.strength), world, checkpoints,
                           args.first_k, phases)
            )

    print(
        f"thompson_closed_loop: {rounds:,} rounds x {seeds} seeds, {len(ARM_CTR)} arms "
        f"(base CTR {min(ARM_CTR):.1%}-{max(ARM_CTR):.1%}), {len(SEGMENTS)} segments, "
        f"prior strength s={args.strength:g}, {args.initial_users} initial users + "
        f"~{np.mean(n_new):.0f} new/seed (new share {args.new_share:g})"
    )
    print()
    print("Expected cumulative regret (clicks lost vs oracle), mean ± sd over seeds;")
    print("'% of random': final regret / random's on the same world (paired), mean ± sd")
    head = "".join(f"{f'@{c:,}':>18}" for c in checkpoints)
    print(f"{'policy':<15}{head}{'% of random':>16}")
    for name in names:
        cells = "".join(
            f"{_fmt([r.regret_at[i] for r in results[name]]):>18}"
            for i in range(len(checkpoints))
        )
        rel = ""
        if "random" in results:
            ratios = [
                r.regret_at[-1] / b.regret_at[-1]
                for r, b in zip(results[name], results["random"], strict=True)
            ]
            rel = _fmt(ratios, 100, 1)
        print(f"{name:<15}{cells}{rel:>16}")
    print()
    print(f"New users' first {args.first_k} interactions: expected CTR (%) by quarter of the run")
    print(f"{'policy':<15}" + "".join(f"{f'Q{i + 1}':>16}" for i in range(phases))
          + f"{'all':>16}{'overall CTR':>16}{'s/seed':>9}")
    for name in names:
        rs = results[name]
        cells = "".join(
            f"{_fmt([r.new_ctr_by_phase[i] for r in rs], 100, 2):>16}" for i in range(phases)
        )
        print(
            f"{name:<15}{cells}{_fmt([r.new_ctr for r in rs], 100, 2):>16}"
            f"{_fmt([r.ctr for r in rs], 100, 2):>16}{np.mean([r.seconds for r in rs]):>9.1f}"
        )
    store_policies = [n for n in names if results[n][0].tiers]
    if store_policies:
        print()
        print("User tiers at the end (share of users, mean over seeds)")
        for name in store_policies:
            tiers = results[name][0].tiers
            shares = {t: np.mean([r.tiers[t] for r in results[name]]) for t in tiers}
            print(f"{name:<15}" + "  ".join(f"{t} {v:.1%}" for t, v in shares.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
