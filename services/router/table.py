"""The routing table: parsing, validation and the per-request backend choice.

Pure: no I/O, no clock, no randomness of its own (the caller passes ``rand``), so every
rule here is checked by table-driven unit tests. The format is documented in
``docs/routing.md`` and ``docs/architecture.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from .options import AgreementSpec, GuardSpec, parse_agreement, parse_guard

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, ...] = ("stable", "canary")
# Who may pick a track with the force header (``spec.traffic.trackHeader``): nobody
# (default), a canary only while it has traffic, or also a canary at weight 0.
TrackHeader = Literal["off", "weighted", "always"]
TRACK_HEADER_MODES: tuple[TrackHeader, ...] = ("off", "weighted", "always")

# Sticky users are spread over this many buckets; one bucket is 0.01 % of users, so an
# integer weight w (percent) owns exactly buckets [0, w * 100).
BUCKETS = 10_000


class TableError(ValueError):
    """A routing table that must not be put in force; the message says why."""


@dataclass(frozen=True)
class Backend:
    track: Track
    url: str
    version: str
    host: str
    port: int
    # Path prefix of the backend URL without the trailing slash ("" for none).
    prefix: str = ""


@dataclass(frozen=True)
class RoutingTable:
    generation: int
    deployment: str
    backends: dict[Track, Backend]
    weights: dict[Track, int]
    sticky_header: str | None = None
    shadow_percent: float = 0.0
    agreement: AgreementSpec | None = None
    guard: GuardSpec | None = None
    track_header: TrackHeader = "off"
    # The document as received, echoed by ``GET /-/table``.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def canary_weight(self) -> int:
        return self.weights.get("canary", 0)

    def to_doc(self) -> dict[str, Any]:
        """The JSON document a router reads (tables come from :func:`parse_table`)."""
        return {**self.raw, "generation": self.generation}

    def with_generation(self, generation: int) -> RoutingTable:
        """The same table under another generation (the writer numbers what it writes)."""
        return replace(self, generation=generation, raw={**self.raw, "generation": generation})


def parse_table(data: bytes | str | dict[str, Any]) -> RoutingTable:
    """Parse and validate a routing table; raise :class:`TableError` with every problem found."""
    if isinstance(data, bytes | str):
        try:
            doc = json.loads(data)
        except RecursionError:
            raise TableError("routing table is nested too deeply to be a table") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers
            raise TableError(f"routing table is not valid JSON: {exc}") from None
    else:
        doc = data
    if not isinstance(doc, dict):
        raise TableError(f"routing table must be a JSON object, got {type(doc).__name__}")

    problems: list[str] = []
    generation: Any = doc.get("generation")
    if not _is_int(generation) or generation < 0:
        problems.append(f"generation must be an integer >= 0, got {generation!r}")
    deployment = doc.get("deployment", "")
    if not isinstance(deployment, str):
        problems.append(f"deployment must be a string, got {deployment!r}")
    backends = _parse_backends(doc.get("backends"), problems)
    weights = _parse_weights(doc.get("weights"), backends, problems)
    sticky = doc.get("stickyHeader")
    if sticky is not None and (not isinstance(sticky, str) or not _is_header_name(sticky)):
        problems.append(f"stickyHeader must be a header name or null, got {sticky!r}")
    shadow = doc.get("shadowPercent", 0)
    if not isinstance(shadow, int | float) or isinstance(shadow, bool) or not 0 <= shadow <= 100:
        problems.append(f"shadowPercent must be a number in 0..100, got {shadow!r}")
    elif shadow > 0 and "canary" not in backends:
        problems.append("shadowPercent > 0 needs a canary backend")
    agreement = parse_agreement(doc.get("agreement"), problems)
    if agreement is not None and agreement.percent > 0 and "canary" not in backends:
        problems.append("agreement.percent > 0 needs a canary backend")
    guard = parse_guard(doc.get("guard"), problems)
    given = doc.get("trackHeader")
    track_header: TrackHeader = "off"
    for mode in TRACK_HEADER_MODES:
        if isinstance(given, str) and given == mode:
            track_header = mode
    if given is not None and given != track_header:
        modes = ", ".join(TRACK_HEADER_MODES)
        problems.append(f"trackHeader must be one of {modes} (or null), got {given!r}")
    if problems:
        raise TableError("invalid routing table: " + "; ".join(problems))
    return RoutingTable(
        generation=generation,
        deployment=deployment,
        backends=backends,
        weights=weights,
        sticky_header=sticky.lower() if sticky else None,
        shadow_percent=float(shadow),
        agreement=agreement,
        guard=guard,
        track_header=track_header,
        raw=doc,
    )


def check_successor(current: RoutingTable | None, new: RoutingTable) -> bool:
    """Whether ``new`` may replace ``current``: False if it is the same table (nothing to do).

    Raises :class:`TableError` for a lower generation, or the same generation with other
    content (the writer must bump the generation so every router agrees on what is in force).
    """
    if current is None:
        return True
    if new.generation < current.generation:
        raise TableError(
            f"generation {new.generation} is lower than generation {current.generation} in force"
        )
    if new.generation == current.generation:
        if new == current:
            return False
        raise TableError(
            f"generation {new.generation} is already in force with other content; "
            "bump the generation to change the table"
        )
    return True


def sticky_bucket(value: str) -> int:
    """Bucket 0..9999 of a sticky header value, the same in every process and release."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def forced_track(table: RoutingTable, force: str | None, feedback: bool = False) -> Track | None:
    """The track the force header picks, or None when it picks nothing (then weights do).

    ``table.track_header`` decides: ``off`` ignores the header, ``weighted`` honours it
    for stable and for a canary with weight > 0, ``always`` also for a canary at weight 0.
    A canary that is rolled back is not in the table, so no mode reaches it. ``feedback``
    (a label for an earlier prediction) pins the request to the track that made the
    prediction: a canary with weight > 0 (``always``: any canary) in every mode.
    Raises :class:`TableError` for a name that is no backend, when the header is honoured.
    """
    # A blank header value is no choice.
    if force is None or not force.strip():
        return None
    mode = table.track_header
    if mode == "off" and not feedback:
        return None
    track = force.strip().lower()
    if track not in table.backends:
        if mode == "off":
            return None
        known = ", ".join(table.backends)
        raise TableError(f"cannot force track {force!r}: this table has {known}")
    if track == "canary" and mode != "always" and table.canary_weight <= 0:
        return None
    return track  # type: ignore[return-value]


def choose(
    table: RoutingTable,
    sticky_value: str | None,
    force: str | None,
    rand: float,
    feedback: bool = False,
) -> Track:
    """The track that serves one request.

    ``force`` (the value of the force header) wins where :func:`forced_track` honours it;
    then a sticky value picks by bucket (users in buckets below ``canary weight * 100``
    get the canary, so raising the weight only moves users upward); otherwise ``rand``
    in [0, 1) splits by weight.
    """
    forced = forced_track(table, force, feedback)
    if forced is not None:
        return forced
    weight = table.canary_weight
    if weight <= 0:
        return "stable"
    if weight >= 100:
        return "canary"
    # A blank header value is no choice: an empty user id would put every anonymous
    # client in one bucket, all on the same track whatever the weight.
    if sticky_value is not None and sticky_value.strip():
        return "canary" if sticky_bucket(sticky_value) < weight * (BUCKETS // 100) else "stable"
    return "canary" if rand * 100.0 < weight else "stable"


def should_shadow(table: RoutingTable, track: Track, rand: float) -> bool:
    """Whether a request served by ``track`` is also mirrored to the other track.

    Stable's requests go to the canary with ``shadowPercent`` (or the agreement share when
    ``agreement.source`` is stable, whichever is larger); the canary's go to stable with
    the agreement share when ``agreement.source`` is canary.
    """
    if "canary" not in table.backends:
        return False
    agreement = table.agreement
    share = 0.0
    if track == "stable":
        share = table.shadow_percent
        if agreement is not None and agreement.source == "stable":
            share = max(share, agreement.percent)
    elif agreement is not None and agreement.source == "canary":
        share = agreement.percent
    return rand * 100.0 < share


def _parse_backends(value: Any, problems: list[str]) -> dict[Track, Backend]:
    if not isinstance(value, dict) or not value:
        problems.append("backends must be a non-empty object {stable: {...}, canary: {...}}")
        return {}
    backends: dict[Track, Backend] = {}
    for name, spec in value.items():
        if name not in TRACKS:
            problems.append(f"unknown backend {name!r} (known: stable, canary)")
            continue
        if not isinstance(spec, dict):
            problems.append(f"backends.{name} must be an object with url and version")
            continue
        url: Any = spec.get("url")
        version: Any = spec.get("version")
        if not isinstance(version, str) or not version:
            problems.append(f"backends.{name}.version must be a non-empty string")
            continue
        parsed = _parse_url(url)
        if isinstance(parsed, str):
            problems.append(f"backends.{name}.url {parsed}")
            continue
        host, port, prefix = parsed
        backends[name] = Backend(name, url, version, host, port, prefix)
    if value and "stable" not in value:
        problems.append("backends must include stable")
    return backends


def _parse_weights(
    value: Any, backends: dict[Track, Backend], problems: list[str]
) -> dict[Track, int]:
    if not isinstance(value, dict):
        problems.append('weights must be an object such as {"stable": 90, "canary": 10}')
        return {}
    weights: dict[Track, int] = {}
    for name, weight in value.items():
        if name not in TRACKS:
            problems.append(f"weights names unknown backend {name!r}")
        elif not _is_int(weight) or not 0 <= weight <= 100:
            problems.append(f"weights.{name} must be an integer in 0..100, got {weight!r}")
        elif name not in backends and weight > 0:
            problems.append(f"weights.{name} is {weight} but there is no {name} backend")
        else:
            weights[name] = weight
    if len(weights) == len(value) and sum(weights.values()) != 100:
        problems.append(f"weights must add up to 100, got {sum(weights.values())}")
    return weights


def _parse_url(url: Any) -> tuple[str, int, str] | str:
    if not isinstance(url, str) or not url:
        return "must be a non-empty string such as http://model-v1:8000"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is malformed: {exc}"
    if parts.scheme != "http":
        return f"{url!r}: only http:// backends are supported"
    if not parts.hostname:
        return f"{url!r} has no host"
    try:
        # What the connection will do with it (an empty or 64+ character label fails here).
        parts.hostname.encode("idna")
    except UnicodeError as exc:
        return f"{url!r}: host {parts.hostname!r} is not a valid name ({exc})"
    if port == 0:
        return f"{url!r}: port must be in 1..65535"
    if parts.query or parts.fragment:
        return f"{url!r} must not have a query or fragment"
    return parts.hostname, port or 80, parts.path.rstrip("/")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_header_name(name: str) -> bool:
    return bool(name) and all(c in _TOKEN_CHARS for c in name)
