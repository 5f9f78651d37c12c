"""Queue and task controls as declared: impossible settings fail at once, in one line that says
what to fix; valid ones turn into the control rows workers upsert."""

from __future__ import annotations

from datetime import timedelta

import pytest

import oncely
from oncely.controls import task_control
from oncely.store.limits import ControlKind

WINDOW = "limit window must be a positive, finite number of seconds"


@pytest.fixture
def app(tmp_path):
    return oncely.App(f"sqlite:///{tmp_path / 'o.db'}")


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"max_running": 0}, "max_running must be a whole number >= 1, got 0"),
        ({"max_running": -2}, "max_running must be a whole number >= 1, got -2"),
        ({"max_running": 1.5}, "max_running must be a whole number >= 1"),
        ({"limit": (-1, 30)}, "limit=(-1, …) must allow a whole number >= 1"),
        ({"limit": (0, 30)}, "limit=(0, …) must allow a whole number >= 1"),
        ({"limit": (1, 0)}, f"{WINDOW}, at most 3162240000 (100 years), got 0"),
        ({"limit": (1, -5)}, WINDOW),
        ({"limit": (1, timedelta(0))}, WINDOW),
        ({"limit": (1, float("nan"))}, f"{WINDOW}, at most 3162240000 (100 years), got nan"),
        ({"limit": (1, float("inf"))}, f"{WINDOW}, at most 3162240000 (100 years), got inf"),
        ({"limit": (1, -float("inf"))}, WINDOW),
        ({"limit": (1, 1e300)}, WINDOW),
        ({"limit": (1, 10**400)}, WINDOW),
        ({"limit": (1, True)}, WINDOW),
        ({"limit": 30}, "limit must be (starts, window)"),
        ({"limit": (1, "30s")}, f"{WINDOW}, at most 3162240000 (100 years), got '30s'"),
        ({"retention": {"failed": 10}}, "retention must be oncely.Retention"),
    ],
)
def test_impossible_queue_settings_fail_in_one_line(app, options, fragment):
    with pytest.raises(oncely.ConfigError) as caught:
        app.queue("billing", **options)
    message = str(caught.value)
    assert message.startswith("queue 'billing': ") and fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "options, handler, fragment",
    [
        ({"concurrency_key": "org:{orgid}"}, lambda ctx, org_id: None,
         "names argument 'orgid', which the handler does not take (org_id)"),
        ({"concurrency_key": "org:{org.id}"}, lambda ctx: None,
         "names argument 'org', which the handler does not take (no arguments)"),
        ({"concurrency_key": "org:{}"}, lambda ctx, org_id: None, "must name arguments"),
        ({"concurrency_key": "org:{org_id"}, lambda ctx, org_id: None, "is invalid"),
        ({"max_per_key": 2}, lambda ctx, org_id: None, "max_per_key needs a concurrency_key"),
        ({"concurrency_key": "{org_id}", "max_per_key": 0}, lambda ctx, org_id: None,
         "max_per_key must be a whole number >= 1, got 0"),
        ({"limit": (200, 0)}, lambda ctx: None, WINDOW),
        ({"limit": (200, float("inf"))}, lambda ctx: None, WINDOW),
        ({"limit": (200, float("nan"))}, lambda ctx: None, WINDOW),
        ({"limit": (200, -1)}, lambda ctx: None, WINDOW),
        ({"limit": (-200, 1)}, lambda ctx: None, "must allow a whole number >= 1"),
    ],
)
def test_impossible_task_settings_fail_in_one_line(app, options, handler, fragment):
    with pytest.raises(oncely.ConfigError) as caught:
        app.task(name="meter", **options)(handler)
    assert str(caught.value).startswith("task 'meter': ") and fragment in str(caught.value)


def test_keep_is_never_unbounded_nor_negative():
    with pytest.raises(oncely.ConfigError, match="never unbounded"):
        oncely.Keep()
    with pytest.raises(oncely.ConfigError, match="age"):
        oncely.Keep(age=-1)
    with pytest.raises(oncely.ConfigError, match="count"):
        oncely.Keep(count=-1)
    assert oncely.Keep(age=timedelta(hours=1)).age_seconds == 3600.0


def test_a_queue_declared_twice_differently_is_refused(app):
    app.queue("billing", max_running=1)
    app.queue("billing", max_running=1)
    with pytest.raises(oncely.ConfigError, match="declared twice"):
        app.queue("billing", max_running=2)


def test_the_key_is_per_task_and_uses_the_handlers_defaults(app):
    @app.task(name="meter", concurrency_key="org:{org_id}:{region}")
    def meter(ctx, org_id: int, region: str = "eu") -> None: ...

    assert meter.options.max_per_key == 1
    assert meter.concurrency_key({"org_id": 7}) == "meter/org:7:eu"
    with pytest.raises(oncely.ConfigError, match="names argument 'org_id'"):
        meter.concurrency_key({})


def test_declarations_become_control_rows(app):
    spec = app.queue("billing", max_running=1, limit=(1, timedelta(seconds=30)),
                     retention=oncely.Retention(failed=oncely.Keep(count=100)))
    row = spec.upsert(app.clock.now())
    assert (row.kind, row.max_running, row.rate_limit, row.rate_window) == (
        ControlKind.QUEUE, 1, 1, 30.0)
    assert row.retention == {"failed": {"age": None, "count": 100}}

    @app.task(name="send", limit=(200, 1))
    def send(ctx) -> None: ...

    control = task_control(send, app.clock.now())
    assert (control.rate_limit, control.rate_window, control.max_per_key) == (200, 1.0, None)
    assert control.spec_hash != task_control(app.task(name="other")(lambda ctx: None),
                                             app.clock.now()).spec_hash
