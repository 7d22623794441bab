"""The router guard: sequential tests on the router's own live counts, acting at once.

The operator judges the canary from Prometheus, so it cannot act faster than scrapes
arrive (15-30 s). The router sees every answer as it happens. With ``guard`` in the
routing table it runs two anytime-valid tests (``mlrollout.services.sequential``) on the
traffic the weight split sends to each track, and the first time one crosses ``1/alpha``
it takes the canary to weight 0 (it never raises a weight) and reports a *trip*:

- **errors** (always): each 5xx or unreachable answer is one event; under H0 (canary
  error rate <= ``maxRatio`` x stable's) it is the canary's with probability at most
  ``maxRatio pi / (maxRatio pi + 1 - pi)``, ``pi`` the canary's share of routed traffic
  when the request was routed (the weight; with a sticky header the share actually
  routed at this weight so far, shrunk towards the weight);
- **agreement** (with ``guard.minAgreement``): each compared row of a mirrored request is
  one event, a disagreement is a hit; H0: agreement >= ``minAgreement``.

Forced requests (``x-mlrollout-track``) and fallback retries are not counted: the
weight did not choose their track. The trip is kept for that canary (version and URL)
whatever weights later tables ask for; a table with another canary, or none, clears it.

Pure state machine: no I/O, no clock (``now`` is passed in), so it is unit-tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from mlrollout.services.sequential import GUARD_RATIOS, SequentialTest, split_null, threshold

from .options import GuardSpec
from .table import RoutingTable

ERROR_OUTCOMES = frozenset({"server_error", "unreachable"})
# Pseudo-requests pulling a sticky table's observed canary share towards its weight.
SHARE_PRIOR = 50.0


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0


@dataclass
class GuardState:
    """One canary's tests, counts and (once crossed) trip."""

    canary_version: str
    canary_url: str
    since_generation: int
    counts: dict[str, _Counts] = field(
        default_factory=lambda: {"stable": _Counts(), "canary": _Counts()}
    )
    errors: SequentialTest = field(default_factory=lambda: SequentialTest(GUARD_RATIOS))
    agreement: SequentialTest = field(default_factory=lambda: SequentialTest(GUARD_RATIOS))
    trip: dict[str, Any] | None = None


class Guard:
    """Feeds the tests and answers which table is really in force."""

    def __init__(self) -> None:
        self.spec: GuardSpec | None = None
        self.state: GuardState | None = None
        self.weight = 0
        self.sticky = False
        self.generation = -1

    # ---- tables ----------------------------------------------------------------------
    def table_applied(self, table: RoutingTable) -> None:
        """A new table is in force: keep the canary's state if it is the same canary."""
        self.spec = table.guard
        self.generation = table.generation
        self.weight = table.canary_weight
        self.sticky = table.sticky_header is not None
        canary = table.backends.get("canary")
        if canary is None:
            self.state = None
            return
        st = self.state
        if st is None or (st.canary_version, st.canary_url) != (canary.version, canary.url):
            self.state = GuardState(canary.version, canary.url, table.generation)

    def effective(self, table: RoutingTable) -> RoutingTable:
        """``table`` as it must be served: the canary at weight 0 once the guard tripped."""
        st = self.state
        if st is None or st.trip is None:
            return table
        return replace(
            table,
            weights={"stable": 100, "canary": 0},
            shadow_percent=0.0,
            agreement=None,
        )

    @property
    def tripped(self) -> bool:
        return self.state is not None and self.state.trip is not None

    # ---- evidence --------------------------------------------------------------------
    def share(self) -> float | None:
        """The canary's share of routed traffic now (None: nothing to compare against)."""
        st = self.state
        if st is None or not 0 < self.weight < 100:
            return None
        w = self.weight / 100.0
        if not self.sticky:
            return w
        routed = st.counts["stable"].requests + st.counts["canary"].requests
        share = (st.counts["canary"].requests + SHARE_PRIOR * w) / (routed + SHARE_PRIOR)
        return min(max(share, 0.001), 0.999)

    def observe(
        self, track: str, outcome: str, now: float, share: float | str | None = "now"
    ) -> bool:
        """One answer to a request the weight split routed; True if this tripped the guard.

        ``share``: the canary's share when the request was routed (``self.share()`` then);
        by default the share now. An answer that arrives after the weight changed must be
        judged at the share it was routed with.
        """
        st = self.state
        if st is None or st.trip is not None or track not in st.counts:
            return False
        if isinstance(share, str):
            share = self.share()
        counts = st.counts[track]
        counts.requests += 1
        if outcome not in ERROR_OUTCOMES or share is None:
            return False
        counts.errors += 1
        if self.spec is None:
            return False
        st.errors.observe(track == "canary", split_null(share, self.spec.max_ratio))
        if st.errors.crossed(self.spec.alpha):
            self._trip(st, "errors", now, share)
            return True
        return False

    def observe_agreement(self, agree: int, disagree: int, now: float) -> bool:
        """Rows compared between canary and stable; True if this tripped the guard."""
        st = self.state
        spec = self.spec
        if st is None or st.trip is not None or spec is None or spec.min_agreement is None:
            return False
        st.agreement.observe_counts(disagree, agree, 1.0 - spec.min_agreement)
        if st.agreement.crossed(spec.alpha):
            self._trip(st, "agreement", now, None)
            return True
        return False

    def adopt(self, report: Any) -> bool:
        """Take over a trip another router (or this one before a restart) reported for the
        canary in force; True if that tripped this guard. Anything else is ignored."""
        st = self.state
        trip = report.get("trip") if isinstance(report, dict) else None
        if st is None or st.trip is not None or not isinstance(trip, dict):
            return False
        if (trip.get("canaryVersion"), trip.get("canaryUrl")) != (st.canary_version, st.canary_url):
            return False
        message = trip.get("message")
        st.trip = {
            **{k: trip.get(k) for k in ("test", "at", "alpha", "eValue", "threshold", "evidence")},
            "canaryVersion": st.canary_version,
            "canaryUrl": st.canary_url,
            "generation": self.generation,
            "adopted": True,
            "message": message if isinstance(message, str) else "router guard tripped elsewhere",
        }
        return True

    def _trip(self, st: GuardState, test: str, now: float, share: float | None) -> None:
        spec = self.spec
        assert spec is not None
        c, s = st.counts["canary"], st.counts["stable"]
        bound = math.exp(threshold(spec.alpha))
        if test == "errors":
            e_value = math.exp(st.errors.log_e)
            message = (
                f"router guard: canary {st.canary_version} errors {c.errors}/{c.requests} vs "
                f"stable {s.errors}/{s.requests} at {share:.0%} canary traffic; "
                f"error-split e-value {e_value:.3g} >= 1/alpha {bound:.3g} "
                f"(H0: canary error rate <= {spec.max_ratio:g} x stable's)"
            )
        else:
            e_value = math.exp(st.agreement.log_e)
            agree, disagree = st.agreement.misses, st.agreement.hits
            message = (
                f"router guard: canary {st.canary_version} agreed with stable on {agree} of "
                f"{agree + disagree} compared rows; agreement e-value {e_value:.3g} >= "
                f"1/alpha {bound:.3g} (H0: agreement >= {spec.min_agreement:g})"
            )
        st.trip = {
            "test": test,
            "canaryVersion": st.canary_version,
            "canaryUrl": st.canary_url,
            "generation": self.generation,
            "at": now,
            "alpha": spec.alpha,
            "eValue": e_value,
            "threshold": bound,
            "message": message,
            "evidence": self._evidence(st),
        }

    def _evidence(self, st: GuardState) -> dict[str, Any]:
        c, s = st.counts["canary"], st.counts["stable"]
        return {
            "canaryRequests": c.requests,
            "canaryErrors": c.errors,
            "stableRequests": s.requests,
            "stableErrors": s.errors,
            "agreeRows": st.agreement.misses,
            "disagreeRows": st.agreement.hits,
        }

    # ---- reporting -------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """``guard`` of ``GET /-/table``: what is watched and, once crossed, the trip."""
        st, spec = self.state, self.spec
        if spec is None:
            return {"state": "off"}
        if st is None:
            return {"state": "idle", "reason": "no canary in the table"}
        out: dict[str, Any] = {
            "state": "tripped" if st.trip is not None else "watching",
            "canaryVersion": st.canary_version,
            "canaryUrl": st.canary_url,
            "sinceGeneration": st.since_generation,
            "alpha": spec.alpha,
            "errorsEValue": math.exp(st.errors.log_e),
            "threshold": math.exp(threshold(spec.alpha)),
            "evidence": self._evidence(st),
        }
        if spec.min_agreement is not None:
            out["agreementEValue"] = math.exp(st.agreement.log_e)
        if st.trip is not None:
            out["trip"] = st.trip
        return out
