"""Synthetic event log in the Taobao UserBehavior format, with planted per-user interests.

The pipeline reads this log when no input is configured, and benchmarks use it at fixed sizes.
`events.csv` has the columns of the public Alibaba Taobao UserBehavior file and no header:
`user_id,item_id,category_id,behavior_type,timestamp`. Ids are positive integers scattered
over a large range, `behavior_type` is one of `pv`, `cart`, `fav`, `buy`, and `timestamp` is
in Unix seconds (UTC). Rows are sorted by user id, then by timestamp.

Each user gets 1 to 3 planted categories. `planted_interests.csv` stores them with the header
`user_id,category_id,rank,weight`, where rank 1 has the largest weight and a user's weights
sum to 1 (up to rounding to 4 decimals).

The log imitates these properties of the real one:

* item popularity follows a Zipf-Mandelbrot law, and each item belongs to one category;
  category sizes follow a Zipf law;
* each user's events come mostly (`interest_share`) from their planted categories;
* behaviour types keep the funnel shares of the real log, and most cart, fav and buy events
  copy the item of an earlier event of the same user;
* events per user are log-normal around `mean_events_per_user`;
* events come in sessions of seconds-to-minutes gaps, and session starts follow a daily
  rhythm over `days` days from `start_date`;
* users return to items seen earlier (`revisit_share`).

Users are generated in chunks of about `EVENTS_PER_CHUNK` events and appended to the file,
so memory does not grow with the number of users. Each chunk has its own random stream
derived from the seed, and the same config writes the same bytes on every run (checked with
numpy 2.4 on Linux x86-64). NOTE: numpy does not promise the same `choice`, `geometric` and
`lognormal` values across releases, and log/exp may round differently on other platforms,
so another numpy version or machine may write different bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import typing
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from behaviorgpt.config import GeneratorConfig

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.csv"
INTERESTS_FILE = "planted_interests.csv"
INTERESTS_HEADER = b"user_id,category_id,rank,weight\n"

BEHAVIOR_TYPES = ("pv", "cart", "fav", "buy")
BEHAVIOR_SHARES = np.array([0.898, 0.053, 0.028, 0.021])
"""Share of each behaviour type, as reported for the public Taobao UserBehavior log."""

USER_ID_RANGE = 1_018_011
ITEM_ID_RANGE = 5_163_070
CATEGORY_ID_RANGE = 5_162_429
"""Upper ends of the id ranges, close to those of the public log (about 1.02 M user ids and
5.2 M item and category ids). Ids are drawn without replacement from 1 up to these values,
or up to 4 times the requested count when that is larger.
NOTE: the public log's maxima are recalled figures, not measured on the file."""

ITEM_POPULARITY_EXPONENT = 0.9
ITEM_POPULARITY_OFFSET = 5.0
"""The item of popularity rank r (counted from 0) is drawn with weight (r + 5) ** -0.9, a
Zipf-Mandelbrot law.
The offset flattens the head, so that no single item takes a large share of the log."""

CATEGORY_SIZE_EXPONENT = 1.0
"""The category of size rank r (counted from 1) receives a share of the items proportional to
r ** -1."""

PREFERENCE_POPULARITY_POWER = 0.5
"""Planted categories are drawn with weight (category popularity) ** 0.5. Popular categories
are preferred more often, but not so often that most users share the same interest."""

INTEREST_POPULARITY_POWER = 0.5
"""Items drawn from a user's planted categories are weighted by popularity ** 0.5, because
users browse deeper than the best sellers in categories they like. With full popularity and
no revisits, the next item was among the user's 10 most recent distinct items 28% of the
time (2,000 users, 20,000 items). The reported figure for the real log is about 20%."""

MAX_INTERESTS = 3
INTEREST_COUNT_SHARES = np.array([0.3, 0.4, 0.3])
"""Shares of users with 1, 2 and 3 planted categories."""

INTEREST_DECAY_RANGE = (0.25, 0.75)
"""A user's interest weights decay geometrically by a ratio drawn from this range, so rank 1
is always at least 4/3 times as strong as rank 2."""

EVENTS_SIGMA = 1.0
"""Standard deviation of log(events per user). At 1.0, about 0.3% of users have more than
10 times the mean."""

MAX_EVENTS_FACTOR = 50
"""Events per user are capped at this multiple of the mean, which bounds a chunk's memory."""

ACTION_ON_SEEN_SHARE = 0.9
"""Share of cart, fav and buy events that copy the item of an earlier event of the user."""

REVISIT_NEAR_P = 0.35
REVISIT_FAR_SHARE = 0.25
"""A revisit goes back a Geometric(0.35) number of events (mean about 3), or, for 25% of
revisits, to any earlier event of the user, which models returns in later sessions."""

SESSION_MEAN_EVENTS = 10.0
GAP_MEDIAN_SECONDS = 45.0
GAP_SIGMA = 1.0
MAX_GAP_SECONDS = 25 * 60
"""Gaps inside a session are log-normal with a 45 s median and are capped at 25 minutes, so a
30-minute inactivity rule recovers the sessions that do not overlap."""

LOCAL_UTC_OFFSET_HOURS = 8
HOURLY_ACTIVITY_LOCAL = np.array([
    0.60, 0.35, 0.20, 0.12, 0.10, 0.12, 0.25, 0.50, 0.70, 0.85, 0.95, 0.95,
    1.00, 0.95, 0.95, 0.95, 0.95, 0.95, 1.00, 1.20, 1.45, 1.60, 1.40, 1.00,
])
"""Relative session starts per hour of the users' local day (UTC+8, as for Taobao's users):
quiet before dawn, flat through the day, peaking at 21:00. A hand-set shape, not a fit."""

EVENTS_PER_CHUNK = 1 << 19
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class GeneratedLog:
    """Files and sizes of one generated log."""

    events_path: Path
    interests_path: Path
    num_events: int
    num_users: int


@dataclass(frozen=True)
class _Catalogue:
    """Items and categories shared by all users, in arrays indexed by dense item index."""

    item_ids: np.ndarray
    category_ids: np.ndarray
    item_category: np.ndarray
    items_by_category: np.ndarray
    """Item indices sorted by category, so each category is one contiguous run."""
    cumulative_popularity: np.ndarray
    """Running sum of item popularity along `items_by_category`, starting with a 0."""
    cumulative_interest_popularity: np.ndarray
    """The same running sum over popularity ** INTEREST_POPULARITY_POWER."""
    category_bounds: np.ndarray
    """Category c owns positions category_bounds[c]:category_bounds[c + 1] of the runs."""
    preference_weights: np.ndarray


def generate_event_log(output_dir: str | Path, config: GeneratorConfig) -> GeneratedLog:
    """Write `events.csv` and `planted_interests.csv` for `config` into `output_dir`.

    Existing files of those names are replaced. Both files are written under temporary names
    and renamed when complete, so a failed run leaves no partial file, and its temporary
    files are removed. Raises ValueError naming the field when the config is out of range or
    inconsistent.
    """
    validate_config(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    events_path = output_dir / EVENTS_FILE
    interests_path = output_dir / INTERESTS_FILE
    events_tmp = events_path.with_name(events_path.name + ".tmp")
    interests_tmp = interests_path.with_name(interests_path.name + ".tmp")

    started = time.perf_counter()
    logger.info("generating %d users, %d items, %d categories, seed %d into %s",
                config.users, config.items, config.categories, config.seed, output_dir)
    catalogue, user_ids = _build_catalogue(config)
    window_start = _window_start(config.start_date)
    users_per_chunk = max(1, int(EVENTS_PER_CHUNK / config.mean_events_per_user))

    num_events = 0
    try:
        with events_tmp.open("wb") as events_file, interests_tmp.open("wb") as interests_file:
            interests_file.write(INTERESTS_HEADER)
            for chunk_index, first in enumerate(range(0, len(user_ids), users_per_chunk)):
                rng = np.random.default_rng([config.seed, 1, chunk_index])
                chunk_users = user_ids[first:first + users_per_chunk]
                events, interests = _generate_chunk(rng, catalogue, chunk_users, config,
                                                    window_start)
                _write_csv(events, events_file)
                _write_csv(interests, interests_file)
                num_events += events.num_rows
    except BaseException:
        events_tmp.unlink(missing_ok=True)
        interests_tmp.unlink(missing_ok=True)
        raise

    os.replace(events_tmp, events_path)
    os.replace(interests_tmp, interests_path)
    elapsed = time.perf_counter() - started
    logger.info("wrote %d events for %d users to %s in %.1f s (%.0f events/s)",
                num_events, len(user_ids), events_path, elapsed, num_events / max(elapsed, 1e-9))
    return GeneratedLog(events_path=events_path, interests_path=interests_path,
                        num_events=num_events, num_users=len(user_ids))


def validate_config(config: GeneratorConfig) -> None:
    """Raise ValueError unless every field is in its documented range and the fields agree.

    `load_config` checks the ranges already. This function repeats that check for configs
    built in code, and adds the checks that involve two fields.
    """
    hints = typing.get_type_hints(GeneratorConfig)
    for spec in dataclasses.fields(GeneratorConfig):
        value = getattr(config, spec.name)
        key = f"generator.{spec.name}"
        expected = hints[spec.name]
        if expected in (int, float) and (isinstance(value, bool)
                                          or not isinstance(value, (int, float))):
            raise ValueError(f"{key} = {value!r} is invalid: expected a number")
        minimum, maximum = spec.metadata.get("minimum"), spec.metadata.get("maximum")
        if minimum is not None and value < minimum:
            raise ValueError(f"{key} = {value!r} is invalid: must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{key} = {value!r} is invalid: must be at most {maximum}")

    if config.items < config.categories:
        raise ValueError(
            f"generator.items = {config.items} is invalid: every category needs at least one "
            f"item, so items must be at least generator.categories = {config.categories}")
    _window_start(config.start_date)


def _window_start(start_date: str) -> int:
    """Return midnight UTC of `start_date` (YYYY-MM-DD) in Unix seconds."""
    try:
        day = date.fromisoformat(start_date)
    except (TypeError, ValueError):
        raise ValueError(f"generator.start_date = {start_date!r} is invalid: "
                         f"expected a date as YYYY-MM-DD, for example 2017-11-25") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


def _build_catalogue(config: GeneratorConfig) -> tuple[_Catalogue, np.ndarray]:
    """Draw the item and category ids, the item-to-category map and item popularity.

    Also returns the sorted raw user ids, because they must be unique across all chunks.
    """
    rng = np.random.default_rng([config.seed, 0])
    item_ids = _draw_unique_ids(rng, config.items, max(ITEM_ID_RANGE, 4 * config.items))
    category_ids = _draw_unique_ids(
        rng, config.categories, max(CATEGORY_ID_RANGE, 4 * config.categories))
    user_ids = np.sort(_draw_unique_ids(rng, config.users, max(USER_ID_RANGE, 4 * config.users)))

    # Every category gets one item first, so none is empty. The rest follow the size law.
    size_weights = _power_law(config.categories, CATEGORY_SIZE_EXPONENT, offset=1.0)
    size_weights = size_weights[rng.permutation(config.categories)]
    item_category = np.concatenate([
        rng.permutation(config.categories),
        rng.choice(config.categories, size=config.items - config.categories, p=size_weights),
    ])
    popularity = _power_law(config.items, ITEM_POPULARITY_EXPONENT, ITEM_POPULARITY_OFFSET)
    popularity = popularity[rng.permutation(config.items)]

    items_by_category = np.argsort(item_category, kind="stable")
    sorted_popularity = popularity[items_by_category]
    cumulative = np.concatenate([[0.0], np.cumsum(sorted_popularity)])
    cumulative_interest = np.concatenate(
        [[0.0], np.cumsum(sorted_popularity ** INTEREST_POPULARITY_POWER)])
    bounds = np.searchsorted(item_category[items_by_category], np.arange(config.categories + 1))
    category_popularity = np.bincount(item_category, weights=popularity,
                                      minlength=config.categories)
    preference = category_popularity ** PREFERENCE_POPULARITY_POWER

    catalogue = _Catalogue(
        item_ids=item_ids,
        category_ids=category_ids,
        item_category=item_category,
        items_by_category=items_by_category,
        cumulative_popularity=cumulative,
        cumulative_interest_popularity=cumulative_interest,
        category_bounds=bounds,
        preference_weights=preference / preference.sum(),
    )
    return catalogue, user_ids


def _draw_unique_ids(rng: np.random.Generator, count: int, largest: int) -> np.ndarray:
    return rng.choice(largest, size=count, replace=False).astype(np.int64) + 1


def _power_law(count: int, exponent: float, offset: float) -> np.ndarray:
    """Return weights (rank + offset) ** -exponent for ranks 0..count-1, summing to 1."""
    weights = (np.arange(count) + offset) ** -exponent
    return weights / weights.sum()


def _generate_chunk(rng: np.random.Generator, catalogue: _Catalogue, user_ids: np.ndarray,
                    config: GeneratorConfig, window_start: int) -> tuple[pa.Table, pa.Table]:
    """Generate the events and planted interests of one chunk of users, sorted by user, time."""
    counts = _draw_event_counts(rng, len(user_ids), config.mean_events_per_user)
    user_of_event = np.repeat(np.arange(len(user_ids)), counts)
    first_event = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(user_of_event)) - np.repeat(first_event, counts)

    interest_categories, interest_weights, interest_counts = _draw_interests(
        rng, catalogue, len(user_ids))
    timestamps = _draw_timestamps(rng, user_of_event, first_event, config, window_start)
    behavior = rng.choice(len(BEHAVIOR_TYPES), size=len(user_of_event),
                          p=BEHAVIOR_SHARES).astype(np.int8)

    fresh_items = _draw_fresh_items(rng, catalogue, user_of_event, interest_categories,
                                    interest_weights, config.interest_share)
    source = _draw_sources(rng, behavior, position, config.revisit_share)
    items = fresh_items[source]

    events = pa.table({
        "user_id": user_ids[user_of_event],
        "item_id": catalogue.item_ids[items],
        "category_id": catalogue.category_ids[catalogue.item_category[items]],
        "behavior_type": pa.DictionaryArray.from_arrays(behavior, pa.array(BEHAVIOR_TYPES)),
        "timestamp": timestamps,
    })

    has_rank = np.arange(MAX_INTERESTS) < interest_counts[:, None]
    interests = pa.table({
        "user_id": np.repeat(user_ids, interest_counts),
        "category_id": catalogue.category_ids[interest_categories[has_rank]],
        "rank": np.broadcast_to(np.arange(1, MAX_INTERESTS + 1), has_rank.shape)[has_rank],
        "weight": np.round(interest_weights[has_rank], 4),
    })
    return events, interests


def _draw_event_counts(rng: np.random.Generator, num_users: int, mean: float) -> np.ndarray:
    """Draw log-normal event counts with the given mean, at least 1 and at most the cap."""
    mu = np.log(mean) - EVENTS_SIGMA ** 2 / 2
    counts = np.rint(rng.lognormal(mu, EVENTS_SIGMA, size=num_users))
    return np.clip(counts, 1, max(1, round(MAX_EVENTS_FACTOR * mean))).astype(np.int64)


def _draw_interests(rng: np.random.Generator, catalogue: _Catalogue,
                    num_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw each user's distinct planted categories and their decreasing weights.

    Returns category indices `[users, 3]`, weights `[users, 3]` (0 past a user's count, rows
    sum to 1) and the count per user. Column 0 is rank 1.
    """
    num_categories = len(catalogue.category_ids)
    max_count = min(MAX_INTERESTS, num_categories)
    counts = rng.choice(np.arange(1, MAX_INTERESTS + 1), size=num_users, p=INTEREST_COUNT_SHARES)
    counts = np.minimum(counts, max_count)

    picks = np.zeros((num_users, MAX_INTERESTS), dtype=np.int64)
    picks[:, :max_count] = rng.choice(num_categories, size=(num_users, max_count),
                                      p=catalogue.preference_weights)
    # Redraw a column wherever it repeats an earlier pick. Each round shrinks the set of
    # duplicates, and max_count <= num_categories guarantees that the loop ends.
    for column in range(1, max_count):
        duplicate = (picks[:, column:column + 1] == picks[:, :column]).any(axis=1)
        while duplicate.any():
            picks[duplicate, column] = rng.choice(num_categories, size=int(duplicate.sum()),
                                                  p=catalogue.preference_weights)
            duplicate = (picks[:, column:column + 1] == picks[:, :column]).any(axis=1)

    ratio = rng.uniform(*INTEREST_DECAY_RANGE, size=num_users)
    weights = ratio[:, None] ** np.arange(MAX_INTERESTS)
    weights[np.arange(MAX_INTERESTS) >= counts[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return picks, weights, counts


def _draw_timestamps(rng: np.random.Generator, user_of_event: np.ndarray,
                     first_event: np.ndarray, config: GeneratorConfig,
                     window_start: int) -> np.ndarray:
    """Draw Unix-second timestamps in sessions, sorted within each user.

    Each event after a user's first starts a new session with probability
    1 / SESSION_MEAN_EVENTS. A session starts on a uniform day at an hour drawn from the
    daily rhythm. A session that would run past the end of the window moves one day
    earlier, or ends at the window's end when no earlier day exists. Sessions that overlap
    merge once the user's events are sorted by time.
    """
    num_events = len(user_of_event)
    window_seconds = config.days * SECONDS_PER_DAY

    starts_session = rng.random(num_events) < 1.0 / SESSION_MEAN_EVENTS
    starts_session[first_event] = True
    session_of_event = np.cumsum(starts_session) - 1
    session_first_event = np.flatnonzero(starts_session)
    session_last_event = np.concatenate([session_first_event[1:] - 1, [num_events - 1]])

    gap_mu = np.log(GAP_MEDIAN_SECONDS)
    gaps = np.clip(np.rint(rng.lognormal(gap_mu, GAP_SIGMA, size=num_events)), 1, MAX_GAP_SECONDS)
    gaps[starts_session] = 0
    elapsed = np.cumsum(gaps.astype(np.int64))
    offset_in_session = elapsed - elapsed[session_first_event][session_of_event]
    duration = offset_in_session[session_last_event]

    num_sessions = len(session_first_event)
    hourly_utc = np.roll(HOURLY_ACTIVITY_LOCAL, -LOCAL_UTC_OFFSET_HOURS)
    day = rng.integers(0, config.days, size=num_sessions)
    hour = rng.choice(24, size=num_sessions, p=hourly_utc / hourly_utc.sum())
    second = rng.integers(0, 3600, size=num_sessions)
    start = day * SECONDS_PER_DAY + hour * 3600 + second

    # Sorting (user << 32) + start orders each user's session starts in time and keeps users
    # apart, because a start is below 2**32 seconds (136 years).
    session_user = user_of_event[session_first_event].astype(np.int64)
    start = np.sort((session_user << 32) + start) & 0xFFFFFFFF

    # A session that would run past the window moves one day earlier, keeping its hour of
    # day. Where that day is before the window, the session ends at the window's end.
    latest_start = np.maximum(window_seconds - 1 - duration, 0)
    day_earlier = start - SECONDS_PER_DAY
    start = np.where(start <= latest_start, start,
                     np.where(day_earlier >= 0, day_earlier, latest_start))
    start = np.minimum(start, latest_start)

    relative = np.minimum(start[session_of_event] + offset_in_session, window_seconds - 1)
    relative = np.sort((user_of_event.astype(np.int64) << 32) + relative) & 0xFFFFFFFF
    return window_start + relative


def _draw_fresh_items(rng: np.random.Generator, catalogue: _Catalogue,
                      user_of_event: np.ndarray, interest_categories: np.ndarray,
                      interest_weights: np.ndarray, interest_share: float) -> np.ndarray:
    """Draw one item index per event without regard to the user's history.

    With probability `interest_share` the item comes from one of the user's planted
    categories, chosen by weight and drawn by popularity ** INTEREST_POPULARITY_POWER.
    Otherwise it comes from the whole catalogue, drawn by popularity.
    """
    num_events = len(user_of_event)
    items = np.empty(num_events, dtype=np.int64)

    from_interest = rng.random(num_events) < interest_share
    interest_users = user_of_event[from_interest]
    rank_cdf = np.cumsum(interest_weights[interest_users], axis=1)
    chosen_rank = (rng.random(len(interest_users))[:, None] > rank_cdf).sum(axis=1)
    chosen_rank = np.minimum(chosen_rank, MAX_INTERESTS - 1)
    category = interest_categories[interest_users, chosen_rank]
    low = catalogue.category_bounds[category]
    high = catalogue.category_bounds[category + 1]
    items[from_interest] = _draw_from_runs(
        rng, catalogue.cumulative_interest_popularity, catalogue.items_by_category, low, high)

    background = ~from_interest
    count = int(background.sum())
    items[background] = _draw_from_runs(
        rng, catalogue.cumulative_popularity, catalogue.items_by_category,
        np.zeros(count, dtype=np.int64), np.full(count, len(catalogue.item_ids)))
    return items


def _draw_from_runs(rng: np.random.Generator, cumulative: np.ndarray, items: np.ndarray,
                    low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Draw one of items[low[i]:high[i]] per i, weighted by the steps of `cumulative`.

    `cumulative` is a running sum of weights along `items` that starts with 0. The draw
    inverts it, and the clip keeps a target that float rounding puts on a boundary
    inside its own range.
    """
    target = cumulative[low] + rng.random(len(low)) * (cumulative[high] - cumulative[low])
    position = np.searchsorted(cumulative, target, side="right") - 1
    position = np.clip(position, low, high - 1)
    return items[position]


def _draw_sources(rng: np.random.Generator, behavior: np.ndarray, position: np.ndarray,
                  revisit_share: float) -> np.ndarray:
    """Return, per event, the index of the event whose fresh item it shows.

    A revisit or an action on a seen item points back to an earlier event of the same user.
    Pointer jumping then follows chains (a buy of a revisited item) to the event that drew
    the item, in about log2(longest chain) rounds.
    """
    num_events = len(behavior)
    is_action = behavior > 0
    share = np.where(is_action, ACTION_ON_SEEN_SHARE, revisit_share)
    repeats = (rng.random(num_events) < share) & (position > 0)

    near = rng.geometric(REVISIT_NEAR_P, size=num_events)
    far = 1 + np.floor(rng.random(num_events) * position).astype(np.int64)
    back = np.where(rng.random(num_events) < REVISIT_FAR_SHARE, far, near)
    back = np.minimum(back, position)

    source = np.arange(num_events)
    source[repeats] -= back[repeats]
    while True:
        followed = source[source]
        if np.array_equal(followed, source):
            return source
        source = followed


def _write_csv(table: pa.Table, sink: typing.BinaryIO) -> None:
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    pa_csv.write_csv(table, sink, options)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, generate the log and print where it was written."""
    parser = argparse.ArgumentParser(
        prog="python -m behaviorgpt.generator",
        description="Write a synthetic Taobao UserBehavior event log (events.csv) and its "
                    "planted interests (planted_interests.csv) into OUTPUT_DIR.")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path,
                        help="folder to write into; created if missing, files replaced")
    defaults = GeneratorConfig()
    hints = typing.get_type_hints(GeneratorConfig)
    for spec in dataclasses.fields(GeneratorConfig):
        parser.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name,
                            type=hints[spec.name], default=getattr(defaults, spec.name),
                            help=f"{spec.metadata['help']} Default: %(default)s.")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = GeneratorConfig(**{spec.name: getattr(args, spec.name)
                                for spec in dataclasses.fields(GeneratorConfig)})
    try:
        log = generate_event_log(args.output_dir, config)
    except ValueError as error:
        parser.error(str(error))
    print(f"{log.num_events} events for {log.num_users} users: {log.events_path}")
    print(f"planted interests: {log.interests_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
