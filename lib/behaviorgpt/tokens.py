"""The token id spaces shared by the sequence builder (Spark) and the model (torch).

Every event becomes one position with several id streams: item, category, event type, time
gap bucket and session-start flag. Items and categories get vocabulary ids (ordered by
frequency, starting after the reserved ids); event types and time gaps have fixed ids defined
here. Id 0 is padding in every stream.
"""

from __future__ import annotations

import math

PAD_ID = 0
UNKNOWN_ID = 1
SESSION_BOUNDARY_ID = 2
MASK_ID = 3
NUM_RESERVED_IDS = 4
"""Item and category vocabularies start their real ids at this value."""

EVENT_TYPES = ("view", "cart", "fav", "purchase", "rating", "remove_from_cart")
"""Canonical event types; an event type's id is its index here plus 2 (0 padding, 1 unknown).
New types are only appended, so the ids of existing types never change."""

EVENT_TYPE_IDS = {name: index + 2 for index, name in enumerate(EVENT_TYPES)}
NUM_EVENT_TYPE_IDS = len(EVENT_TYPES) + 2

FIRST_EVENT_GAP_ID = 1
"""Time gap id of a user's first event, which has no previous event."""

MAX_GAP_LOG2 = 30
"""Gaps of 2**30 seconds (34 years) or more share the last bucket."""

NUM_TIME_GAP_IDS = MAX_GAP_LOG2 + 3
"""Ids 0 (padding), 1 (first event) and 2 + floor(log2(1 + gap_seconds)) for 0..MAX_GAP_LOG2."""


def time_gap_id(gap_seconds: float | None) -> int:
    """Map the seconds since the user's previous event to its log-scale bucket id.

    `None` means there is no previous event. Negative gaps cannot occur in time-ordered
    sequences and are clamped to 0 seconds.
    """
    if gap_seconds is None:
        return FIRST_EVENT_GAP_ID
    bucket = int(math.floor(math.log2(1.0 + max(0.0, gap_seconds))))
    return 2 + min(bucket, MAX_GAP_LOG2)
