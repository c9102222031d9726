"""The pipeline's stage after the join: recalibration, drift alerts, conformal, posteriors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from worker.core.alerts import AlertLifecycle
from worker.core.calibrators import calibrator_from_dict
from worker.core.conformal import fit_qhat
from worker.core.drift import EceHigh, FeedbackStall, LateClickRate
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.mathfn import clamp_logit
from worker.core.metrics import CalibrationReport
from worker.core.pipeline._model import ModelState
from worker.core.pipeline._scope_detectors import ScopeDetectors
from worker.core.pipeline.monitor_config import MonitorConfig
from worker.core.pipeline.outputs import Outputs
from worker.core.policy import PolicyConfig, RecalibrationPolicy
from worker.core.posteriors import PosteriorStore
from worker.core.records.click import Click
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression
from worker.core.records.scope import GLOBAL, SEGMENT_PREFIX

_REFIT_KINDS = ("calibration_drift", "base_rate_shift")

#: Record keys of the stage's state (see ``FeedbackStage.dirty_keys``).
MONITOR_KEY = "monitor"
POST_PREFIX = "post:"
PUSER_PREFIX = "puser:"
PARM_PREFIX = "parm:"
PEVICT_PREFIX = "pevict:"


class FeedbackStage:
    """Everything downstream of the join for one partition (``Pipeline`` drives it): the
    recalibration policy, the drift detectors and their alerts, conformal, posteriors.

    **Inputs** (event time from the records; ``created_at`` is the caller's clock, the core
    reads none):

    - ``on_impression(imp)``: ``score_shift`` on the model logit (global and segment
      scopes; labels are not needed) and the stall detector's *arrival* counts.
    - ``on_feedback(fb)`` (every mature label, in join order): per (model, scope) the
      calibration CUSUM and the base-rate CUSUM on the probability the scope's current
      version serves (``p`` below), a decayed ``OnlineCalibration`` checked by ``EceHigh``
      and conformal coverage; the stall and late-click counts; the posteriors; then the
      ``RecalibrationPolicy``, whose versions are returned.
    - ``on_click(click)``: counts arriving clicks (shown in ``feedback_stall`` details, to
      tell "no clicks at all" from "clicks that do not join").
    - ``on_late_click(click)``: a late click for ``late_clicks_high``.
    - ``tick(event_ts)``: the ``feedback_stall`` check (acts once per stall bucket; cheap
      to call after every input line).
    - ``finish(event_ts)``: final posterior snapshots of every (user, arm) and arm.

    **Scopes and the served probability.** The scopes of a model are ``global`` and
    ``segment:<s>``. ``p`` is what the scope-level calibrator serving the event says now,
    before the event reaches the policy (so the event is out of sample for it): the
    segment's newest version, else the global's, else identity — per-user versions are
    left out, the scope's calibrator is what the scope's detectors test. A segment's
    detectors see all its events; the global detectors see the events of segments the
    global calibrator serves (no own version, or a mirror of the global). When the
    version a scope serves changes, its calibration and base-rate CUSUMs are reset (their
    null is about the served calibrator).

    **Label order.** Positives mature at the click, negatives a window later, so in label
    order the newest impressions show their clicks and not yet their non-clicks (at
    start-up nothing else): a sequential test reads that as under-prediction. Like the
    policy, the calibration statistics take a positive only once a negative of an
    impression at least as recent has arrived (the join finalises negatives in
    impression-time order): complete impression cohorts only. Their decay runs on
    impression time for the same reason (by label time a cohort's negatives would weigh
    more than its positives).

    **Alerts.** A change detector's alarm (``calibration_drift``, ``base_rate_shift``,
    ``score_shift``, ``late_clicks_high``) is observed at once as active; besides, every
    ``check_every`` scope events every condition is evaluated, active while the latest
    alarm is less than ``quiet_events`` events old (``ece_high``: the ``EceHigh`` test on
    the decayed report). ``AlertLifecycle`` turns that into one firing and one resolved
    event per episode. A *firing* ``calibration_drift`` or ``base_rate_shift`` calls
    ``policy.request_refit(model, scope, "drift")`` at once (a global request also refits
    the segments, so segment requests of the same event are dropped); its versions are
    emitted in the same call. Not while the model's ``feedback_stall`` fires: labels
    without their clicks would be learnt as drift (the alerts still fire).
    ``score_shift`` relearns its reference after an alarm (``rebaseline``): a new score
    distribution is announced once, not forever; a global alarm also restarts the
    segments' references. ``late_clicks_high`` is about the click pipeline and the
    attribution window, shared by all models, and clicks carry no model: it is raised under
    ``pipeline_model_id`` (default ``"*"``), scope ``global``; on-time clicks are the
    positive labels.

    **Feedback stall.** Expected clicks (the served ``p``) and clicks (positive labels)
    are counted when the label matures, at ``label_ts``: a window then compares
    impressions with clicks that have all had their chance to arrive, so neither start-up
    nor click delays look like a stall. A firing check also needs impressions still
    arriving (expected clicks of the window's arrivals ``>= stall_min_arrival_share`` of
    the matured ones): when traffic stops, its last impressions mature without clicks
    after them, which is not a broken pipeline. Value: the window's Poisson p-value of its
    clicks; threshold: the detector's ``alpha``.

    **Conformal.** Each global and segment version gets ``conformal: {"alpha", "qhat"}``,
    ``qhat`` fitted (``fit_qhat``) on the scope's newest ``conformal_buffer`` *holdout*
    events (the policy's split: never used to fit the version) calibrated with the new
    version; only those since the version's ``training.from_ts`` when there are at least
    ``conformal_min_n`` of them (after a drift refit: the new regime). The global scope
    uses the events of the segments it serves. Coverage of the served ``qhat`` is tracked
    per scope (``coverage()``).

    **Posteriors.** One ``PosteriorStore`` for all models (click rates are the user's). The
    arm comes from the impression; ``arm=None`` is passed as is: the store then updates
    the user's pooled posterior, tier and rates but creates no (user, arm) pair (a made-up
    arm would publish a posterior nobody can use). ``conformal_uncertain`` is whether the
    set of ``p`` under the served ``qhat`` is {0, 1} (None before any ``qhat``).

    Deterministic for one input order. **State** is a set of records for a compacted
    changelog (``Pipeline`` persists them): ``monitor``, bounded by models x scopes, and
    one record per user and per arm for the rest (``dirty_keys``, ``export``,
    ``from_records``), so a persisted batch writes the users it touched, not all of them.
    ``to_dict``/``from_dict`` (``"v": 2``) hold the whole state as those records.

    >>> from worker.core.records.impression import Impression
    >>> from worker.core.records.feedback import Feedback
    >>> mon = FeedbackStage(MonitorConfig(check_every=100))
    >>> rng = np.random.default_rng(0)
    >>> at = "2026-01-01T00:00:00Z"
    >>> alerts, versions = [], []
    >>> for i in range(3_000):
    ...     true_z = rng.normal(-1.5, 1.0)
    ...     z = 1.6 * true_z                             # an over-confident model
    ...     imp = Impression(f"i{i}", f"u{i % 50}", "it", 1_000 * i, "m",
    ...                      1 / (1 + math.exp(-z)), z, "web", "news", None)
    ...     _ = mon.on_impression(imp, at)
    ...     y = int(rng.random() < 1 / (1 + math.exp(-true_z)))
    ...     out = mon.on_feedback(Feedback(imp, y, 1_000 * i, None, None), at)
    ...     alerts += out.alerts
    ...     versions += out.calibrators
    >>> a = alerts[0]
    >>> a["kind"], a["scope"], a["status"], a["details"]["direction"], a["event_ts"] < 500_000
    ('calibration_drift', 'segment:web', 'firing', 'overconfident', True)
    >>> all(0 < v["conformal"]["qhat"] <= 1 for v in versions)
    True
    >>> [round(row["coverage"], 2) for row in mon.coverage() if row["scope"] == "segment:web"]
    [0.89]
    >>> len(mon.finish(None, at).posteriors)     # 50 users x 1 arm, and the arm itself
    51
    >>> FeedbackStage.from_dict(mon.to_dict()).to_dict() == mon.to_dict()
    True
    """

    def __init__(
        self, config: MonitorConfig | None = None, policy: RecalibrationPolicy | None = None
    ) -> None:
        if config is None:
            config = MonitorConfig()
        if not isinstance(config, MonitorConfig):
            raise ConfigError(f"config must be a MonitorConfig; got {type(config).__name__}")
        if policy is None:
            policy = RecalibrationPolicy()
        if not isinstance(policy, RecalibrationPolicy):
            raise ConfigError(f"policy must be a RecalibrationPolicy; got {type(policy).__name__}")
        self._cfg = config
        self._policy = policy
        self._alerts = AlertLifecycle(**config.alerts)
        self._store = PosteriorStore(**config.posteriors)
        self._ece = EceHigh(**config.ece_high)
        self._ece_min_n = float(self._ece.config()["min_n"])
        self._late = LateClickRate(**config.late_clicks)
        self._late_n = 0
        self._late_alarm_n: int | None = None
        # Arriving clicks of the whole partition, in the stall detector's buckets.
        self._raw_clicks = FeedbackStall(**config.stall)
        self._bucket_ms = int(self._raw_clicks.config()["bucket_ms"])
        self._models: dict[str, ModelState] = {}
        self._max_ts = 0
        self._tick_bucket = -1

    # ------------------------------------------------------------------ read-only

    @property
    def config(self) -> MonitorConfig:
        """The hyper-parameters."""
        return self._cfg

    @property
    def policy(self) -> RecalibrationPolicy:
        """The recalibration policy the monitor drives (read it; do not feed it directly)."""
        return self._policy

    @property
    def posteriors(self) -> PosteriorStore:
        """The posterior store (for Thompson sampling and HTTP reads)."""
        return self._store

    @property
    def max_event_ts(self) -> int:
        """The largest event time seen (impression, click or label time)."""
        return self._max_ts

    @property
    def next_tick_ms(self) -> int:
        """The smallest event time at which ``tick`` acts again (it acts once per stall
        bucket): a caller may skip the calls before it."""
        return (self._tick_bucket + 1) * self._bucket_ms

    def models(self) -> list[str]:
        """Model ids seen, in first-seen order."""
        return list(self._models)

    def firing_alerts(self) -> list[dict[str, Any]]:
        """The alerts firing now (their latest observation), oldest first."""
        return self._alerts.firing()

    def version(self, model_id: str, scope: str = GLOBAL) -> dict[str, Any] | None:
        """The newest global/segment version published through the monitor (a copy)."""
        model = self._models.get(model_id)
        msg = None if model is None else model.versions.get(scope)
        return None if msg is None else dict(msg)

    def scopes(self, model_id: str) -> list[str]:
        """The model's scopes with detectors (``global``, then its segments in first-seen
        order, up to ``max_segments``); empty for an unknown model."""
        model = self._models.get(model_id)
        return [] if model is None else list(model.scopes)

    @property
    def ece_test(self) -> EceHigh:
        """The ``ece_high`` test (threshold beyond the noise floor, ``min_n``): stateless."""
        return self._ece

    def calibration_report(self, model_id: str, scope: str = GLOBAL) -> CalibrationReport | None:
        """The decayed calibration report of the probabilities a scope served (the ECE
        behind ``ece_high``; e.g. for an "ECE by model and scope" gauge), or None."""
        model = self._models.get(model_id)
        state = None if model is None else model.scopes.get(scope)
        return None if state is None or state.calib.count == 0 else state.calib.report()

    def coverage(self) -> list[dict[str, Any]]:
        """Online coverage of the served conformal ``qhat`` per (model, scope).

        One dict per scope that has counted events: ``model_id``, ``scope``, ``alpha``,
        ``qhat`` (served now), ``n``, ``n_eff``, ``coverage``, ``coverage_0`` /
        ``coverage_1`` (per label), ``uncertain_share``, ``empty_share``, ``z`` (coverage
        against ``1 - alpha`` in standard errors; well below -3: under-coverage).
        """
        alpha = float(self._cfg.conformal_alpha)
        out = []
        for model_id, model in self._models.items():
            for key, scope in model.scopes.items():
                view = scope.coverage_view()
                if view.n == 0:
                    continue
                served = GLOBAL if key == GLOBAL else model.served_scope(key)
                out.append({
                    "model_id": model_id,
                    "scope": key,
                    "alpha": alpha,
                    "qhat": None if served is None else model.qhat.get(served),
                    "n": view.n,
                    "n_eff": view.n_eff,
                    "coverage": view.coverage,
                    "coverage_0": view.coverage_by_label(0),
                    "coverage_1": view.coverage_by_label(1),
                    "uncertain_share": view.uncertain_share,
                    "empty_share": view.empty_share,
                    "z": view.z(1.0 - alpha),
                })
        return out

    # ------------------------------------------------------------------ inputs

    def _model(self, model_id: str) -> ModelState:
        model = self._models.get(model_id)
        if model is None:
            model = self._models[model_id] = ModelState(self._cfg)
        return model

    def on_impression(
        self, imp: Impression, created_at: str, out: Outputs | None = None
    ) -> Outputs:
        """An impression the join accepted (call it right after ``join.add_impression``,
        before the step's feedback), in input order."""
        _check_created_at(created_at)
        if out is None:
            out = Outputs()
        if imp.ts > self._max_ts:
            self._max_ts = imp.ts
        model = self._model(imp.model_id)
        z = clamp_logit(imp.logit)
        seg_key = SEGMENT_PREFIX + imp.segment
        p = model.serve_for(model.served_scope(seg_key))(imp.score, z, imp)
        model.arrivals.count_impression(p, imp.ts)
        if self._shift(imp.model_id, GLOBAL, model.scopes[GLOBAL], z, imp.ts, created_at, out):
            # The model's scores moved: every segment's reference is stale too, including
            # one still warming up (it would learn a mix of both distributions and alarm
            # later on the new one alone). One alert for the model, not one per segment.
            for key, state in model.scopes.items():
                if key != GLOBAL:
                    state.shift.rebaseline()
        seg = model.scope(seg_key, self._cfg)
        if seg is not None:
            self._shift(imp.model_id, seg_key, seg, z, imp.ts, created_at, out)
        return out

    def on_click(self, click: Click, created_at: str) -> Outputs:
        """A decoded click, in input order (counted for the stall alert's details)."""
        _check_created_at(created_at)
        if click.ts > self._max_ts:
            self._max_ts = click.ts
        self._raw_clicks.count_click(click.ts)
        return Outputs.EMPTY

    def on_late_click(
        self, click: Click, created_at: str, out: Outputs | None = None
    ) -> Outputs:
        """A click the join classified as late (``JoinStep.late_clicks``)."""
        _check_created_at(created_at)
        if out is None:
            out = Outputs()
        self._click_timing(True, click.ts, created_at, out)
        return out

    def on_feedback(
        self, fb: Feedback, created_at: str, out: Outputs | None = None
    ) -> Outputs:
        """A mature label (``JoinStep.feedback``, in order); returns what it caused (appended
        to ``out`` when given: the pipeline collects a whole batch in one ``Outputs``)."""
        _check_created_at(created_at)
        if out is None:
            out = Outputs()
        imp = fb.impression
        model_id = imp.model_id
        y = fb.label
        if y != 0 and y != 1:
            raise InvalidInputError("schema", f"label must be 0 or 1; got {y!r}")
        ts = fb.label_ts
        if ts > self._max_ts:
            self._max_ts = ts
        model = self._models.get(model_id)
        if model is None:
            model = self._model(model_id)
        z = clamp_logit(imp.logit)
        seg_key = SEGMENT_PREFIX + imp.segment
        served = model.served_scope(seg_key)
        # The served probability in the impression's context (a contextual version's
        # daily pattern is then part of the detectors' null, not an alarm every morning).
        p = model.serve_for(served)(imp.score, z, imp)
        qhat = None if served is None else model.qhat.get(served)
        refit: list[str] = []

        # Positives mature at the click, negatives a window later: in label order the newest
        # impressions show their clicks and not yet their non-clicks (at start-up nothing
        # else), which a sequential test reads as under-prediction. The calibration
        # statistics take complete impression cohorts only (``CohortGate``), and the policy
        # fits on exactly the events the gate releases here.
        released = model.gate.offer(fb)
        # ``fb`` itself, when released, is served what was just computed for it: nothing is
        # published before the policy's ingest below.
        holdout = [self._detect(model, cohort_event, ts, created_at, out, refit,
                                (z, seg_key, served, p) if cohort_event is fb else None)
                   for cohort_event in released]

        # Counts that do not depend on label order: the stall and late-click detectors (at
        # label time) and the posteriors (Beta counts).
        model.matured.count_impression(p, ts)
        if y:
            model.matured.count_click(ts)
            self._click_timing(False, ts, created_at, out)
        uncertain = None if qhat is None else (p <= qhat and 1.0 - p <= qhat)
        for event in self._store.observe(imp.user_id, imp.arm, imp.segment, y, ts, uncertain):
            out.tier_changes.append({"type": "tier_change", **event})

        msgs = self._policy.ingest(fb, released, created_at, holdout)
        if msgs:
            self._publish(model, msgs, out)
        if refit and self._alerts.state("feedback_stall", model_id, GLOBAL) == "firing":
            # Labels are missing their clicks: a refit would learn the broken pipeline.
            refit = []
        if refit:
            # A global refit refits every segment too.
            scopes = [GLOBAL] if GLOBAL in refit else list(dict.fromkeys(refit))
            for scope in scopes:
                msgs = self._policy.request_refit(model_id, scope, "drift", created_at=created_at)
                self._publish(model, msgs, out)
        return out

    def _detect(
        self,
        model: ModelState,
        fb: Feedback,
        alert_ts: int,
        created_at: str,
        out: Outputs,
        refit: list[str],
        serving: tuple[float, str, str | None, float] | None = None,
    ) -> bool:
        """One label into the calibration statistics of its segment and the global scope,
        tested against the calibrator serving the scope now; whether it is a holdout event
        (the policy, which owns the split, is handed the flag instead of hashing again).
        ``serving``: ``(z, seg_key, served, p)`` of the event when the caller has them."""
        imp = fb.impression
        y = fb.label
        # Decay by impression time, not label time: a cohort's positives mature a window
        # before its negatives, and weighting them by label time would tilt every bin
        # toward the negatives.
        ts = imp.ts
        if serving is None:
            z = clamp_logit(imp.logit)
            seg_key = SEGMENT_PREFIX + imp.segment
            served = model.served_scope(seg_key)
            p = model.serve_for(served)(imp.score, z, imp)
        else:
            z, seg_key, served, p = serving
        holdout = self._policy.is_holdout(imp.impression_id)
        code = model.seg_codes.get(seg_key)
        if code is None:
            code = model.code(seg_key)
        model_id = imp.model_id
        seg = model.scopes.get(seg_key)
        if seg is None:
            seg = model.scope(seg_key, self._cfg)
        if seg is not None:
            qhat = None if served is None else model.qhat.get(served)
            self._labelled(model_id, seg_key, seg, p, y, ts, alert_ts, qhat, created_at, out,
                           refit)
            if holdout:
                seg.ring.append(z, y, imp.ts, seg=code)
        g = model.scopes[GLOBAL]
        if holdout:
            g.ring.append(z, y, imp.ts, seg=code)
        if seg_key not in model.covered:
            self._labelled(model_id, GLOBAL, g, p, y, ts, alert_ts, model.qhat.get(GLOBAL),
                           created_at, out, refit)
        return holdout

    def tick(self, event_ts: int, created_at: str) -> Outputs:
        """The ``feedback_stall`` check of every model at input event time ``event_ts``.

        ``event_ts`` is the input clock (the largest impression/click ``ts`` so far, or the
        wall clock on an idle partition), never a label time: after ``join.finish()`` labels
        mature up to a window past the last input, where no click can follow, so do not
        tick there. Acts once per stall bucket (``stall["bucket_ms"]``, default 1 min), so
        calling it after every input line is cheap.
        """
        _check_created_at(created_at)
        if isinstance(event_ts, bool) or not isinstance(event_ts, int) or event_ts < 0:
            raise InvalidInputError("schema", f"event_ts must be an integer >= 0; got {event_ts!r}")
        bucket = event_ts // self._bucket_ms
        if bucket <= self._tick_bucket:
            return Outputs.EMPTY  # this bucket was checked for every model already
        out = Outputs()
        self._tick_bucket = bucket
        share = float(self._cfg.stall_min_arrival_share)
        for model_id, model in self._models.items():
            imp, exp, clk = model.matured.window(event_ts)
            a_imp, a_exp, _ = model.arrivals.window(event_ts)
            arriving = a_imp > 0 and a_exp >= share * exp
            active = arriving and model.matured.check(event_ts)
            cfg = model.matured.config()
            details = {
                "impressions": imp,
                "expected_clicks": exp,
                "clicks": clk,
                "impressions_arrived": a_imp,
                "clicks_arrived": self._raw_clicks.window(event_ts)[2],
                "window_ms": cfg["window_ms"],
                "min_expected_clicks": model.matured.min_expected_clicks,
            }
            out.alerts += self._observe(
                "feedback_stall", model_id, GLOBAL, active, model.matured.p_value(event_ts),
                float(cfg["alpha"]), event_ts, created_at, details,
            )
        return out

    def drain_posteriors(self, event_ts: int) -> list[dict[str, Any]]:
        """Snapshots of the (user, arm) pairs updated since the last drain (for a batched
        compacted topic)."""
        return self._store.drain_dirty(event_ts)

    def finish(self, event_ts: int | None, created_at: str) -> Outputs:
        """End of input: snapshots of every (user, arm) and arm posterior at ``event_ts``
        (default: the largest event time seen) in ``posteriors``."""
        _check_created_at(created_at)
        ts = self._max_ts if event_ts is None else event_ts
        out = Outputs(posteriors=list(self._store.snapshots(ts)))
        self._store.discard_dirty()  # all were just emitted
        return out

    # ------------------------------------------------------------------ detectors

    def _observe(
        self,
        kind: str,
        model_id: str,
        scope: str,
        active: bool,
        value: float | None,
        threshold: float | None,
        event_ts: int,
        created_at: str,
        details: dict[str, Any],
    ) -> list[dict[str, Any]]:
        if value is not None and not math.isfinite(value):
            value = None
        return self._alerts.observe(
            kind, model_id, scope, active, value, threshold, event_ts, created_at,
            self._cfg.severity_of(kind), details,
        )

    def _recent(self, alarm_n: int | None, n: int) -> bool:
        return alarm_n is not None and n - alarm_n < self._cfg.quiet_events

    def _shift(
        self,
        model_id: str,
        key: str,
        scope: ScopeDetectors,
        z: float,
        ts: int,
        created_at: str,
        out: Outputs,
    ) -> bool:
        """Score-shift step of one scope; True on an alarm."""
        scope.n_imp += 1
        det = scope.shift
        if det.update(z):
            scope.shift_alarm_n = scope.n_imp
            scope.directions["score_shift"] = det.direction
            state = det.to_dict()
            details = {"direction": det.direction, "alarms": det.alarms,
                       "ville_p_value": det.ville_p_value, "impressions": scope.n_imp}
            # A new score distribution is announced once: learn it as the new reference.
            det.rebaseline()
            out.alerts += self._observe("score_shift", model_id, key, True,
                                        state["last_alarm_statistic"], det.threshold, ts,
                                        created_at, details)
            return True
        if scope.n_imp % self._cfg.check_every == 0:
            active = self._recent(scope.shift_alarm_n, scope.n_imp)
            details = {"direction": scope.directions.get("score_shift"), "alarms": det.alarms,
                       "warmed_up": det.warmed_up, "impressions": scope.n_imp}
            out.alerts += self._observe("score_shift", model_id, key, active, det.statistic,
                                        det.threshold, ts, created_at, details)
        return False

    def _labelled(
        self,
        model_id: str,
        key: str,
        scope: ScopeDetectors,
        p: float,
        y: int,
        ts: int,
        alert_ts: int,
        qhat: float | None,
        created_at: str,
        out: Outputs,
        refit: list[str],
    ) -> None:
        scope.n_fb += 1
        n = scope.n_fb
        cusum = scope.cusum
        base = scope.base_rate
        cusum_alarm = cusum.update(p, y)
        base_alarm = base.update(p, y)
        # ``cusum.update`` has validated ``p`` and ``y``; ``ts`` is the impression's.
        scope.calib.count_trusted(p, y, ts)
        if qhat is not None:
            scope.add_coverage(p, y, qhat, ts)
        periodic = n % self._cfg.check_every == 0
        if not (cusum_alarm or base_alarm or periodic):
            return  # nothing to observe (most events)
        events: list[dict[str, Any]] = []
        if cusum_alarm:
            scope.cusum_alarm_n = n
            scope.directions["calibration_drift"] = cusum.direction
        if cusum_alarm or periodic:
            value = cusum.last_alarm_statistic if cusum_alarm else cusum.statistic
            events += self._observe(
                "calibration_drift", model_id, key, self._recent(scope.cusum_alarm_n, n),
                value, cusum.threshold, alert_ts, created_at,
                self._drift_details(scope, "calibration_drift", cusum.alarms, cusum.n,
                                    cusum.statistics, cusum.ville_p_value),
            )
        if base_alarm:
            scope.base_alarm_n = n
            scope.directions["base_rate_shift"] = base.direction
        if base_alarm or periodic:
            value = base.to_dict()["last_alarm_statistic"] if base_alarm else base.statistic
            events += self._observe(
                "base_rate_shift", model_id, key, self._recent(scope.base_alarm_n, n),
                value, base.threshold, alert_ts, created_at,
                self._drift_details(scope, "base_rate_shift", base.alarms, base.n,
                                    base.statistics, base.ville_p_value),
            )
        if periodic:
            events += self._ece_check(model_id, key, scope, alert_ts, created_at)
        for event in events:
            if event["status"] == "firing" and event["kind"] in _REFIT_KINDS:
                refit.append(key)
        out.alerts += events

    @staticmethod
    def _drift_details(
        scope: ScopeDetectors,
        kind: str,
        alarms: int,
        n: int,
        statistics: dict[str, float],
        ville: float,
    ) -> dict[str, Any]:
        served = scope.served
        return {
            "direction": scope.directions.get(kind),
            "statistics": statistics,
            "alarms": alarms,
            "events_since_reset": n,
            "ville_p_value": ville,
            "served": None if served is None else {"scope": served[0], "version": served[1]},
        }

    def _ece_check(
        self, model_id: str, key: str, scope: ScopeDetectors, ts: int, created_at: str
    ) -> list[dict[str, Any]]:
        rep = scope.calib.report()
        numbers = (rep.ece, rep.ece_floor, rep.ece_se, rep.n)
        usable = all(math.isfinite(x) for x in numbers) and rep.n >= self._ece_min_n
        active = usable and self._ece.check(rep.ece, rep.ece_floor, rep.ece_se, rep.n)
        details = {
            "ece": _finite(rep.ece),
            "ece_floor": _finite(rep.ece_floor),
            "ece_se": _finite(rep.ece_se),
            "n": _finite(rep.n),
            "p_value": (self._ece.p_value(rep.ece, rep.ece_floor, rep.ece_se, rep.n)
                        if usable else None),
        }
        value = rep.ece - rep.ece_floor if usable else None
        return self._observe("ece_high", model_id, key, active, value, self._ece.threshold,
                             ts, created_at, details)

    def _click_timing(self, late: bool, ts: int, created_at: str, out: Outputs) -> None:
        if ts > self._max_ts:
            self._max_ts = ts
        self._late_n += 1
        det = self._late
        alarm = det.update(late)
        if alarm:
            self._late_alarm_n = self._late_n
        if alarm or self._late_n % self._cfg.check_every == 0:
            value = det.to_dict()["last_alarm_statistic"] if alarm else det.statistic
            details = {"late_share": _finite(det.late_share), "late": det.late,
                       "clicks": det.clicks, "acceptable_share": det.acceptable,
                       "alarms": det.alarms}
            out.alerts += self._observe(
                "late_clicks_high", self._cfg.pipeline_model_id, GLOBAL,
                self._recent(self._late_alarm_n, self._late_n), value, det.threshold, ts,
                created_at, details,
            )

    # ------------------------------------------------------------------ publication

    def _publish(
        self, model: ModelState, msgs: list[dict[str, Any]], out: Outputs
    ) -> None:
        """Record versions, add their conformal blocks, reset detectors whose served
        calibrator changed; emit the versions in the policy's order."""
        if not msgs:
            return
        emitted = []
        scoped = []
        for msg in msgs:
            scope = msg["scope"]
            if scope == GLOBAL or scope.startswith(SEGMENT_PREFIX):
                # A copy: the policy keeps its own message as its state.
                msg = dict(msg)
                model.set_version(msg)
                scoped.append(msg)
            emitted.append(msg)
        # Which segments the global serves depends on the whole batch, and so does the
        # global's conformal sample: blocks are computed once every version is in place.
        model.refresh_covered()
        for msg in scoped:
            msg["conformal"] = self._conformal_block(model, msg)
            model.qhat[msg["scope"]] = msg["conformal"]["qhat"]
        for key, scope_state in model.scopes.items():
            served = model.served_id(key)
            if served != scope_state.served:
                scope_state.served = served
                scope_state.reset_change_detectors()
        out.calibrators.extend(emitted)

    def _conformal_block(self, model: ModelState, msg: dict[str, Any]) -> dict[str, float]:
        cfg = self._cfg
        alpha = float(cfg.conformal_alpha)
        key = msg["scope"]
        own = model.scopes.get(key)
        if own is not None and key != GLOBAL:
            z, y, ts, _, _ = own.ring.columns()
        else:
            z, y, ts, _, seg = model.scopes[GLOBAL].ring.columns()
            if key == GLOBAL:
                codes = model.served_codes()
                # Like the policy: a global that serves no segment stays every segment's
                # fallback, so all events count.
                keep = np.isin(seg, codes) if codes else np.ones(seg.size, dtype=bool)
            else:
                keep = seg == model.seg_codes.get(key, -1)
            z, y, ts = z[keep], y[keep], ts[keep]
        from_ts = msg["training"].get("from_ts")
        if from_ts is not None:
            recent = ts >= int(from_ts)
            if int(recent.sum()) >= cfg.conformal_min_n:
                z, y = z[recent], y[recent]
        if z.size == 0:
            return {"alpha": alpha, "qhat": 1.0}
        p = np.asarray(calibrator_from_dict(msg).apply_logit(z), dtype=np.float64)
        return {"alpha": alpha, "qhat": fit_qhat(p, y, alpha)}

    # ------------------------------------------------------------------ persistence

    # Incremental persistence (``Pipeline`` writes these to a compacted changelog): the
    # ``monitor`` record holds what is bounded by models x scopes (detectors, alerts,
    # versions, the policy's scopes, the store's rates and counters); everything that
    # grows with users or arms has a record of its own, named by ``dirty_keys``:
    #   post:<user_id>    the posterior store's user (PosteriorStore.export_user)
    #   puser:<user_id>   the policy's user, all models (RecalibrationPolicy.export_user)
    #   parm:<arm>        the arm's population posterior and rates (export_arm)
    #   pevict:<user_id>  an evicted user's undrained tombstone keys (export_evicted)

    def dirty_keys(self) -> set[str]:
        """Keys of the per-user and per-arm records changed since the last call (the call
        clears them); a record whose ``export`` is now None (an evicted user) is among
        them. ``monitor`` is not: every input changes it, so the caller that fed the
        stage knows."""
        store = self._store
        keys = {POST_PREFIX + u for u in store.dirty_users()}
        keys.update([PUSER_PREFIX + u for u in self._policy.dirty_users()])
        keys.update([PARM_PREFIX + a for a in store.dirty_arms()])
        keys.update([PEVICT_PREFIX + u for u in store.dirty_evicted()])
        return keys

    def export(self, key: str) -> dict[str, Any] | None:
        """The record named ``key`` (``monitor`` or a ``dirty_keys`` key), JSON-ready; None
        means "delete it". An unknown key raises ``StateError``."""
        if key == MONITOR_KEY:
            return self._export_shared()
        if key.startswith(POST_PREFIX):
            return self._store.export_user(key[len(POST_PREFIX):])
        if key.startswith(PUSER_PREFIX):
            return self._policy.export_user(key[len(PUSER_PREFIX):])
        if key.startswith(PARM_PREFIX):
            return self._store.export_arm(key[len(PARM_PREFIX):])
        if key.startswith(PEVICT_PREFIX):
            return self._store.export_evicted(key[len(PEVICT_PREFIX):])
        raise StateError(f"unknown monitor state key {key!r}")

    def records(self) -> dict[str, dict[str, Any]]:
        """Every record (a full scan: for whole-state snapshots, not per batch)."""
        store = self._store
        out: dict[str, dict[str, Any] | None] = {MONITOR_KEY: self._export_shared()}
        out.update((POST_PREFIX + u, store.export_user(u)) for u in store.users())
        out.update((PUSER_PREFIX + u, self._policy.export_user(u))
                   for u in self._policy.record_users())
        out.update((PARM_PREFIX + a, store.export_arm(a)) for a in store.arms())
        out.update((PEVICT_PREFIX + u, store.export_evicted(u)) for u in store.evicted_users())
        return {k: v for k, v in out.items() if v is not None}

    def _export_shared(self) -> dict[str, Any]:
        return {
            "v": 1,
            "policy": self._policy.export_shared(),
            "posteriors": self._store.export_shared(),
            "alerts": self._alerts.to_dict(),
            "late": self._late.to_dict(),
            "late_n": self._late_n,
            "late_alarm_n": self._late_alarm_n,
            "raw_clicks": self._raw_clicks.to_dict(),
            "max_ts": self._max_ts,
            "tick_bucket": self._tick_bucket,
            "models": [[m, s.to_dict()] for m, s in self._models.items()],
        }

    @classmethod
    def from_records(
        cls,
        records: Mapping[str, dict[str, Any] | None],
        config: MonitorConfig | None = None,
        policy_config: PolicyConfig | None = None,
    ) -> FeedbackStage:
        """A stage continuing exactly where the one that exported ``records`` (the latest
        record of every key, as ``export`` gave them; None values are deletes) stood.
        Hyper-parameters are not in the records: pass the exporting stage's. Nothing is
        dirty afterwards; malformed records raise ``StateError``."""
        mon = cls(config, RecalibrationPolicy(policy_config))
        posts: list[dict[str, Any]] = []
        pusers: list[dict[str, Any]] = []
        arms: list[dict[str, Any]] = []
        evicted: list[dict[str, Any]] = []
        named = (
            (POST_PREFIX, posts, "user_id"),
            (PUSER_PREFIX, pusers, "user_id"),
            (PARM_PREFIX, arms, "arm"),
            (PEVICT_PREFIX, evicted, "user_id"),
        )
        shared = None
        try:
            for key, value in records.items():
                if value is None:
                    continue
                if key == MONITOR_KEY:
                    shared = value
                    continue
                for prefix, sink, field in named:
                    if key.startswith(prefix):
                        if value[field] != key[len(prefix):]:
                            raise ValueError(f"record {key!r} names {value[field]!r}")
                        sink.append(value)
                        break
                else:
                    raise ValueError(f"unknown monitor state key {key!r}")
            if shared is not None and shared.get("v") != 1:
                raise ValueError(f"unsupported monitor record version {shared.get('v')!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed monitor state: {exc}") from exc
        mon._policy.restore(None if shared is None else shared["policy"], pusers)
        mon._store.restore(None if shared is None else shared["posteriors"], posts, arms,
                           evicted)
        if shared is not None:
            mon._load_shared(shared)
        return mon

    def _load_shared(self, data: Mapping[str, Any]) -> None:
        cfg = self._cfg
        try:
            self._alerts = AlertLifecycle.from_dict(data["alerts"])
            self._late = LateClickRate.from_dict(data["late"])
            self._late_n = int(data["late_n"])
            alarm_n = data["late_alarm_n"]
            self._late_alarm_n = None if alarm_n is None else int(alarm_n)
            self._raw_clicks = FeedbackStall.from_dict(data["raw_clicks"])
            self._max_ts = int(data["max_ts"])
            self._tick_bucket = int(data["tick_bucket"])
            self._models = {str(m): ModelState.from_dict(s, cfg) for m, s in data["models"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed monitor state: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The whole state with ``"v": 2``: the hyper-parameters (monitor and policy) and
        every record (``records``)."""
        return {
            "v": 2,
            "config": self._cfg.to_dict(),
            "policy_config": self._policy.config.to_dict(),
            "records": self.records(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeedbackStage:
        """Inverse of ``to_dict``; malformed state raises ``StateError``."""
        try:
            if data.get("v") != 2:
                raise ValueError(f"unsupported monitor state version {data.get('v')!r}")
            cfg = MonitorConfig.from_dict(data["config"])
            policy_cfg = PolicyConfig.from_dict(data["policy_config"])
            records = data["records"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed monitor state: {exc}") from exc
        return cls.from_records(records, cfg, policy_cfg)

    def __repr__(self) -> str:
        return (
            f"FeedbackStage(models={self.models()}, firing={len(self._alerts.firing())}, "
            f"users={self._store.n_users})"
        )


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _check_created_at(created_at: object) -> None:
    if not isinstance(created_at, str) or not created_at:
        raise InvalidInputError(
            "schema", f"created_at must be an ISO 8601 UTC string; got {created_at!r}"
        )
