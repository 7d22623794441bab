"""``POST /feedback`` bodies: entries of ``{"feedback_id", "label" | "labels"}``, checked
one by one with an ``InputError`` naming the entry and the rule (HTTP-free, pure).

Labels are matched to earlier predictions by the server-issued feedback id (returned with
the prediction in the body and in the ``x-mlrollout-feedback-id`` header).
"""

from __future__ import annotations

import math
from typing import Any

from mlrollout.services.model.validation import InputError, Reason

# The server-issued key a label is posted with (docs/serving.md, "Feedback").
FEEDBACK_ID_HEADER = "x-mlrollout-feedback-id"


def label_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def regression_labels(values: tuple[Any, ...], entry: int) -> list[float]:
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not math.isfinite(number):
            raise InputError(
                Reason.WRONG_TYPE,
                "label",
                f"feedback entry {entry}: a regression label must be a finite number, got {value!r}",
            )
        numbers.append(number)
    return numbers


def feedback_items(data: Any, max_items: int) -> list[tuple[str, tuple[Any, ...]]]:
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise InputError(Reason.EMPTY_BATCH, None, "no feedback entries")
    if len(entries) > max_items:
        raise InputError(
            Reason.BATCH_TOO_LARGE,
            None,
            f"{len(entries)} feedback entries; the limit is {max_items}",
        )
    items = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(Reason.BAD_STRUCTURE, None, f"feedback entry {i} must be an object")
        if "request_id" in entry and "feedback_id" not in entry:
            raise InputError(
                Reason.MISSING_FEATURE,
                "feedback_id",
                f"feedback entry {i}: labels are matched by feedback_id, the server-issued id "
                f"returned with the prediction (body field, or header {FEEDBACK_ID_HEADER}), "
                "not by request_id",
            )
        rid = entry.get("feedback_id")
        if not isinstance(rid, str) or not rid:
            raise InputError(
                Reason.MISSING_FEATURE,
                "feedback_id",
                f"feedback entry {i}: feedback_id must be a non-empty string",
            )
        extra = set(entry) - {"feedback_id", "label", "labels"}
        if extra:
            name = sorted(extra)[0]
            raise InputError(
                Reason.UNKNOWN_FEATURE, name, f"feedback entry {i}: unknown field {name!r}"
            )
        if ("label" in entry) == ("labels" in entry):
            raise InputError(
                Reason.MISSING_FEATURE,
                "label",
                f"feedback entry {i}: give exactly one of label or labels",
            )
        truth = [entry["label"]] if "label" in entry else entry["labels"]
        if not isinstance(truth, list) or not truth:
            raise InputError(
                Reason.WRONG_TYPE, "labels", f"feedback entry {i}: labels must be a non-empty list"
            )
        for value in truth:
            if value is None or isinstance(value, dict | list | bool):
                raise InputError(
                    Reason.WRONG_TYPE,
                    "label",
                    f"feedback entry {i}: a label must be a string or number",
                )
        items.append((rid, tuple(truth)))
    return items
