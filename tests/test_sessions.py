"""Sessionization: a 30-minute gap splits sessions, ties are ordered by event id."""

from behaviorgpt.sessions import sessionize

GAP = 30 * 60


def make_events(spark, rows):
    return spark.createDataFrame(
        [(f"e{index:03d}", user, f"i{index}", "c", "view", ts) for index, (user, ts) in
         enumerate(rows)],
        "event_id string, user_key string, item_id string, category_id string, "
        "event_type string, event_ts long")


def test_gap_splits_sessions(spark):
    base = 1_511_658_000
    events = make_events(spark, [
        ("u1", base), ("u1", base + 60), ("u1", base + 60 + GAP),  # exactly the gap: same session
        ("u1", base + 61 + 2 * GAP),  # one second more than the gap: new session
        ("u2", base),
    ])

    sessions = sessionize(events, gap_seconds=GAP).orderBy("user_key", "session_start").collect()

    assert [(row["user_key"], row["event_count"]) for row in sessions] == [
        ("u1", 3), ("u1", 1), ("u2", 1)]
    first = sessions[0]
    assert [event["event_ts"] for event in first["events"]] == [base, base + 60, base + 60 + GAP]
    assert first["session_end"].timestamp() - first["session_start"].timestamp() == 60 + GAP


def test_ties_and_ids_are_deterministic(spark):
    base = 1_511_658_000
    events = make_events(spark, [("u1", base)] * 3)

    first = sessionize(events, gap_seconds=GAP).collect()
    second = sessionize(events.repartition(3), gap_seconds=GAP).collect()

    assert len(first) == 1
    assert [event["event_id"] for event in first[0]["events"]] == ["e000", "e001", "e002"]
    assert first[0]["session_id"] == second[0]["session_id"]
