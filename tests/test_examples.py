"""Training examples and task labels cut from hand-built histories."""

import pytest

from behaviorgpt import tokens
from behaviorgpt.examples import ExampleSettings, user_examples

DAY = 86_400
HOUR = 3_600
T0 = 1_511_740_800  # 2017-11-27 00:00:00 UTC
VIEW, CART, PURCHASE = (tokens.EVENT_TYPE_IDS[name] for name in ("view", "cart", "purchase"))


def history(events):
    """Build a history from (seconds after T0, item, category, event type, session start)."""
    return {
        "item": [event[1] for event in events],
        "category": [event[2] for event in events],
        "event_type": [event[3] for event in events],
        "time_gap": [tokens.FIRST_EVENT_GAP_ID] + [5] * (len(events) - 1),
        "session_start": [event[4] for event in events],
        "event_time": [T0 + event[0] for event in events],
    }


def by_split(examples):
    grouped = {}
    for example in examples:
        grouped.setdefault(example["split"], []).append(example)
    return grouped


LOO = ExampleSettings(protocol="leave_one_out", max_len=10)


def test_one_event_user():
    events = history([(0, 10, 20, VIEW, 1)])

    assert user_examples("u", events, LOO) == []
    # Under the temporal protocol the event is history, and nothing follows it.
    temporal = ExampleSettings(protocol="temporal", max_len=10, cutoff=T0 + DAY)
    examples = user_examples("u", events, temporal)
    assert [example["split"] for example in examples] == ["test"]
    assert examples[0]["num_inputs"] == 1
    assert examples[0]["return_label"] == 0


def test_two_event_user_only_test():
    events = history([(0, 10, 20, VIEW, 1), (60, 11, 21, PURCHASE, 0)])

    splits = by_split(user_examples("u", events, LOO))

    assert list(splits) == ["test"]
    test = splits["test"][0]
    assert test["item"] == [10, 11]
    assert test["num_inputs"] == 1
    assert test["category_interest"] == [21]
    assert test["purchase_label"] == 1
    assert test["return_label"] == 0


def test_leave_one_out_labels():
    events = history([
        (0, 10, 20, VIEW, 1),
        (60, 11, 21, CART, 0),
        (2 * HOUR, 12, 22, VIEW, 1),        # new session 2 h later
        (30 * HOUR, 13, 23, VIEW, 1),       # outside the 24 h windows of the training anchor
        (31 * HOUR, 14, 24, PURCHASE, 0),   # validation event
        (32 * HOUR, 15, 25, PURCHASE, 0),   # test event
    ])

    splits = by_split(user_examples("u", events, LOO))

    train = splits["train"]
    assert len(train) == 1
    example = train[0]
    assert example["item"] == [10, 11, 12, 13]
    assert example["num_inputs"] == 3
    # The anchor is event 2 (2 h). Event 3, at 30 h, is past the 24 h category and purchase
    # windows but inside the 3-day return window.
    assert example["anchor_time"] == T0 + 2 * HOUR
    assert example["category_interest"] == []
    assert example["purchase_label"] == 0
    assert example["return_label"] == 1
    assert example["observed_until"] == T0 + 31 * HOUR

    validation = splits["validation"][0]
    assert validation["item"] == [10, 11, 12, 13, 14]
    assert validation["category_interest"] == [24]
    assert validation["purchase_label"] == 1
    assert validation["return_label"] == 0

    test = splits["test"][0]
    assert test["item"] == [10, 11, 12, 13, 14, 15]
    assert test["category_interest"] == [25]
    assert test["observed_until"] is None


def test_no_purchase_user():
    events = history([(hour * HOUR, 10 + hour, 20, VIEW, 1) for hour in range(6)])

    examples = user_examples("u", events, LOO)

    assert [example["purchase_label"] for example in examples] == [0, 0, 0]
    assert [example["category_interest"] for example in examples] == [[20]] * 3


def test_return_window_length():
    settings = ExampleSettings(protocol="leave_one_out", max_len=10,
                               return_window_seconds=2 * DAY)
    events = history([(0, 10, 20, VIEW, 1), (60, 11, 20, VIEW, 0),
                      (3 * DAY, 12, 20, VIEW, 1),   # returns 3 days later: too late
                      (3 * DAY + 60, 13, 20, VIEW, 0), (3 * DAY + 120, 14, 20, VIEW, 0)])

    train = by_split(user_examples("u", events, settings))["train"][0]

    assert train["anchor_time"] == T0 + 60
    assert train["return_label"] == 0
    longer = ExampleSettings(protocol="leave_one_out", max_len=10, return_window_seconds=4 * DAY)
    assert by_split(user_examples("u", events, longer))["train"][0]["return_label"] == 1
    # Unknown category ids never enter the interest set.
    unknown = history([(0, 10, 20, VIEW, 1), (60, 11, tokens.UNKNOWN_ID, VIEW, 0)])
    assert user_examples("u", unknown, settings)[0]["category_interest"] == []


def test_session_crossing_cutoff():
    cutoff = T0 + DAY
    settings = ExampleSettings(protocol="temporal", max_len=10, cutoff=cutoff)
    events = history([
        (0, 10, 20, VIEW, 1),
        (DAY - 600, 11, 21, VIEW, 1),       # last session starts 10 min before the cutoff
        (DAY - 60, 12, 22, CART, 0),
        (DAY + 60, 13, 23, PURCHASE, 0),    # same session, after the cutoff
        (DAY + 5 * HOUR, 14, 24, VIEW, 1),  # a new session 5 h after the cutoff
    ])

    splits = by_split(user_examples("u", events, settings))

    train = splits["train"][0]
    assert train["item"] == [10, 11, 12]
    assert train["category_interest"] == [22]
    assert train["purchase_label"] == 0
    assert train["observed_until"] == cutoff

    test = splits["test"][0]
    assert test["item"] == [10, 11, 12, 13]
    assert test["num_inputs"] == 3
    assert test["label_start_time"] == cutoff
    assert test["category_interest"] == [23, 24]
    assert test["purchase_label"] == 1
    # The session that crosses the cutoff continues; the new one 5 h later is the return.
    assert test["return_label"] == 1


def test_temporal_user_without_future():
    settings = ExampleSettings(protocol="temporal", max_len=10, cutoff=T0 + DAY)
    events = history([(0, 10, 20, VIEW, 1), (60, 11, 21, VIEW, 0)])

    test = by_split(user_examples("u", events, settings))["test"][0]

    assert test["num_inputs"] == test["length"] == 2
    assert test["category_interest"] == []
    assert test["purchase_label"] == 0
    assert test["return_label"] == 0


def test_sliding_windows_cover_targets_once():
    settings = ExampleSettings(protocol="leave_one_out", max_len=4, max_windows_per_user=100)
    events = history([(minute * 60, 100 + minute, 20, VIEW, minute == 0) for minute in range(12)])

    train = by_split(user_examples("u", events, settings))["train"]

    targets = []
    for example in train:
        assert example["length"] <= 4
        targets += example["item"][1:example["num_inputs"] + 1]
    # Events 1..9 are training targets once each; 10 and 11 are validation and test.
    assert sorted(targets) == list(range(101, 110))
    assert len({example["example_id"] for example in train}) == len(train)


def test_window_cap_keeps_latest():
    settings = ExampleSettings(protocol="leave_one_out", max_len=4, max_windows_per_user=2)
    events = history([(minute * 60, 100 + minute, 20, VIEW, minute == 0) for minute in range(12)])

    train = by_split(user_examples("u", events, settings))["train"]

    assert [example["item"][-1] for example in train] == [109, 106]


@pytest.mark.parametrize("protocol", ["leave_one_out", "temporal"])
def test_no_leakage(protocol):
    """Test-period events carry their own items, categories and a purchase: no training
    example may contain them as inputs, targets or labels."""
    cutoff = T0 + 10 * HOUR
    settings = ExampleSettings(protocol=protocol, max_len=3, cutoff=cutoff,
                               max_windows_per_user=100,
                               category_window_seconds=30 * DAY,
                               purchase_window_seconds=30 * DAY, return_window_seconds=30 * DAY)
    past = [(hour * HOUR, 10 + hour, 20 + hour % 3, VIEW, 1) for hour in range(10)]
    future = [(10 * HOUR + 60, 90, 90, PURCHASE, 1), (11 * HOUR, 91, 91, PURCHASE, 1)]
    held_out = {90, 91}

    examples = user_examples("u", history(past + future), settings)

    train = [example for example in examples if example["split"] == "train"]
    assert train
    for example in train:
        assert not held_out & set(example["item"])
        assert not held_out & set(example["category"])
        assert not held_out & set(example["category_interest"])
        assert example["purchase_label"] == 0
        assert max(example["event_time"]) < T0 + 10 * HOUR + 60
        assert example["observed_until"] <= T0 + 10 * HOUR + 60
    if protocol == "leave_one_out":
        assert {example["split"] for example in examples} == {"train", "validation", "test"}
    else:
        test = [example for example in examples if example["split"] == "test"]
        assert test[0]["item"][-1] == 90
