"""What the model server keeps between a prediction and its delayed label, bounded in bytes.

Each prediction gets a **feedback id**: 12 random bytes and a 12-byte HMAC-SHA256 tag of
them under a key only this process knows, base64url-encoded (32 characters). The id is
issued by the server, so no client can choose or guess another client's id, and the tag
lets the server tell an id it issued and has since forgotten (evicted: counted as
``unmatched``) from one it never issued (refused, not counted: a client cannot inflate
``unmatched``). A label is taken once per id; a second one is refused.

The store keeps only what feedback needs: the predicted class index per row (one byte for
up to 256 classes) or the predicted value (8 bytes) for regressors, never the input rows.
Its size is bounded in bytes (``capacity_bytes``, ``MLROLLOUT_FEEDBACK_BYTES``): every entry
is charged its packed predictions plus a fixed per-entry overhead measured for CPython 3.11
(``ENTRY_OVERHEAD``), and the oldest entries are evicted first. Ids already judged are
remembered (so a second label is refused) in a share of the same budget.

Pure: no HTTP, no clock; thread-safe.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
from collections import OrderedDict
from enum import Enum

import numpy as np

DEFAULT_CAPACITY_BYTES = 32 << 20
MIN_CAPACITY_BYTES = 64 << 10
# Per-entry cost beyond the packed predictions: the 32-character key string (81 bytes), the
# bytes object's header (33), the OrderedDict slot, hash-table share and linked-list node
# (~100), rounded up. tests/unit/test_feedback_store.py measures it with tracemalloc.
ENTRY_OVERHEAD = 256
# A judged id is kept as a key with no value: the key string and the dict slot.
JUDGED_OVERHEAD = 192
# Share of the budget for judged ids (refusing a second label); the rest holds predictions.
JUDGED_SHARE = 8
_NONCE = 12
_TAG = 12
ID_LENGTH = 32  # base64url of 24 bytes, no padding needed
_ID_RE = re.compile(r"[A-Za-z0-9_-]{32}")


class Lookup(Enum):
    FOUND = "found"
    JUDGED = "judged"  # a label was already received for it
    EVICTED = "evicted"  # issued here, forgotten to stay within the byte bound
    UNKNOWN = "unknown"  # not an id this server issued


class FeedbackStore:
    def __init__(
        self,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        *,
        dtype: np.dtype | type = np.uint8,
        key: bytes | None = None,
    ) -> None:
        if capacity_bytes != 0 and capacity_bytes < MIN_CAPACITY_BYTES:
            raise ValueError(
                f"feedback store must be 0 (off) or at least {MIN_CAPACITY_BYTES} bytes, "
                f"got {capacity_bytes}"
            )
        self.dtype = np.dtype(dtype)
        self.capacity_bytes = capacity_bytes
        self._judged_budget = capacity_bytes // JUDGED_SHARE
        self._predictions_budget = capacity_bytes - self._judged_budget
        self._key = key if key is not None else os.urandom(32)
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._judged: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evicted = 0

    # ---------------------------------------------------------------- ids

    def new_id(self) -> str:
        nonce = os.urandom(_NONCE)
        return _encode(nonce + self._tag(nonce))

    def issued_here(self, feedback_id: str) -> bool:
        raw = _decode(feedback_id)
        if raw is None:
            return False
        return hmac.compare_digest(raw[_NONCE:], self._tag(raw[:_NONCE]))

    def _tag(self, nonce: bytes) -> bytes:
        return hmac.new(self._key, nonce, hashlib.sha256).digest()[:_TAG]

    # ---------------------------------------------------------------- store

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    @property
    def used_bytes(self) -> int:
        """Bytes charged to predictions and judged ids (what ``capacity_bytes`` bounds)."""
        with self._lock:
            return self._bytes + len(self._judged) * JUDGED_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, feedback_id: str, values: np.ndarray) -> bool:
        """Keep ``values`` for ``feedback_id``; False (nothing kept) if the id is in use,
        was judged, or the predictions alone are over the budget."""
        if not self.enabled:
            return False
        packed = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        cost = len(packed) + ENTRY_OVERHEAD
        if cost > self._predictions_budget:
            return False
        with self._lock:
            if feedback_id in self._entries or feedback_id in self._judged:
                return False
            self._entries[feedback_id] = packed
            self._bytes += cost
            while self._bytes > self._predictions_budget:
                _, old = self._entries.popitem(last=False)
                self._bytes -= len(old) + ENTRY_OVERHEAD
                self.evicted += 1
        return True

    def peek(self, feedback_id: str) -> tuple[Lookup, int]:
        """Whether a label for the id can be taken now, and how many rows it predicted."""
        with self._lock:
            packed = self._entries.get(feedback_id)
            if packed is not None:
                return Lookup.FOUND, len(packed) // self.dtype.itemsize
            if feedback_id in self._judged:
                return Lookup.JUDGED, 0
        return (Lookup.EVICTED if self.issued_here(feedback_id) else Lookup.UNKNOWN), 0

    def take(self, feedback_id: str) -> np.ndarray | None:
        """Remove and return the predictions for the id, remembering it as judged."""
        with self._lock:
            packed = self._entries.pop(feedback_id, None)
            if packed is None:
                return None
            self._bytes -= len(packed) + ENTRY_OVERHEAD
            self._judged[feedback_id] = None
            while len(self._judged) * JUDGED_OVERHEAD > self._judged_budget:
                self._judged.popitem(last=False)
        return np.frombuffer(packed, dtype=self.dtype)


def class_dtype(n_classes: int) -> np.dtype:
    """The narrowest unsigned type holding a class index."""
    return np.dtype(
        np.uint8 if n_classes <= 1 << 8 else np.uint16 if n_classes <= 1 << 16 else np.uint32
    )


def looks_like_id(text: str) -> bool:
    return bool(_ID_RE.fullmatch(text))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode(text: str) -> bytes | None:
    if not looks_like_id(text):
        return None
    try:
        return base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        return None
