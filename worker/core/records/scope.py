"""Scope names of calibrator versions and alerts (DESIGN §3): ``global``, ``segment:<name>``,
``user:<id>``. One place, for the policy, the feedback stage and the serving client."""

GLOBAL = "global"
SEGMENT_PREFIX = "segment:"
USER_PREFIX = "user:"
