"""The incident's free-tier job, the demo's bad example (``oncely_billing.demo.incident_job``):
every run rewrites every organization, and its emails go out before its state commits, so a run
that overlaps another sends them again — where oncely's job writes only what changed. Same
maths for both: the scenario's usage and states. Frozen clock, real stores (the demo's write
log counts the organization rows written), a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

import oncely
from oncely.testing import FrozenClock
from oncely_billing import db, metering_of
from oncely_billing.demo import incident_job
from oncely_billing.demo.dataset import install_write_log
from oncely_billing.demo.services import MailCapture
from oncely_billing.settings import SmtpSettings
from tests.billing.conftest import (
    EXPECTED_AFTER_FIRST_RUN,
    Events,
    load_scenario,
    make_app,
    run_thresholds,
    scenario_orgs,
    state_of,
)

ORGS = len(scenario_orgs())


@pytest.fixture
def mail() -> Iterator[MailCapture]:
    capture = MailCapture().start()
    yield capture
    capture.stop()


@pytest.fixture
def app(store_url: str, clock: FrozenClock, events: Events,
        mail: MailCapture) -> Iterator[oncely.App]:
    app = make_app(store_url, None, clock, events,
                   smtp=SmtpSettings(host=mail.host, port=mail.port))
    load_scenario(app, events)
    install_write_log(app)
    yield app
    app.close()


def org_writes(app: oncely.App) -> int:
    with db.connection(app) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM sim_org_writes").fetchone()[0])


def test_every_run_of_the_incident_job_rewrites_every_organization(app: oncely.App) -> None:
    incident_job.install(app)
    for run in (1, 2, 3):
        result = run_thresholds(app)
        assert result["org_rows_written"] == result["orgs"] == ORGS
        assert org_writes(app) == run * ORGS  # changed or not
        assert state_of(app) == EXPECTED_AFTER_FIRST_RUN  # oncely's maths, the same answers
        app.clock.advance(600)


def test_oncely_job_writes_only_the_organizations_that_changed(app: oncely.App) -> None:
    run_thresholds(app)
    first = org_writes(app)
    assert 0 < first < ORGS
    app.clock.advance(600)
    run_thresholds(app)
    assert org_writes(app) == first  # nothing changed, nothing written
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN


def test_a_run_overlapping_the_incident_job_sends_its_emails_again(
        app: oncely.App, mail: MailCapture) -> None:
    runtime, now = metering_of(app), app.clock.now()
    first = incident_job.evaluate(app, runtime, now)  # emailed; its state not committed yet
    second = incident_job.evaluate(app, runtime, now)  # started before the first one commits
    assert first.emails == second.emails == 3  # the three organizations that changed state
    for run in (first, second):
        assert incident_job.write(app, run.rows, now) == (ORGS, 0)
    copies = Counter(message.key for message in mail.messages())
    assert len(copies) == 3 and set(copies.values()) == {2}, copies
    assert len({message.message_id for message in mail.messages()}) == 6  # no stable id
    later = incident_job.evaluate(app, runtime, app.clock.now())
    assert later.emails == 0  # once a state committed, its change is not emailed again
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
