"""Threshold emails: the outbox row is the promise, the ``send-notification`` task keeps it.

The free-tier job writes one outbox row per (organization, cycle start, threshold) in the same
fenced transaction as the organization's new state, and enqueues a ``metering.send-notification``
job for it in that transaction too. The row's unique key makes the notification exactly-once
however often the job runs; the state and the promise to email commit together or not at all.

Delivery (this module) sends one message to the organization's owners and admins through SMTP
(stdlib ``smtplib``; host, port, TLS and credentials from ``ONCELY_SMTP_*``) and marks the row
``sent`` under the job's fence. A failed send is recorded on the row and retried by the task's
retry policy (jittered exponential backoff); when those retries are spent, the sweeper
(:mod:`oncely_billing.sweep`) hands the row to a new send job, with backoff, for as long as the
row stays ``pending``.

The one window for a duplicate: the SMTP server accepted the message (end of DATA) but the
row's ``sent`` mark did not commit (the process died, the store failed, or the lease was lost in
between). The mark is written right after the server's acceptance, *before* the SMTP ``QUIT``,
so the window is one store round trip; a later attempt then sends the message again. Every
message carries a stable ``Message-ID`` derived from the outbox row (organization, cycle start,
threshold, row id), so the copy is the same message to any receiver that deduplicates by it.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any

import oncely
from oncely_billing import db
from oncely_billing.settings import MeteringSettings, SmtpSettings

SEND_TASK = "metering.send-notification"
BLOCKED_KIND = "ingestion_blocked"
WARNING_KIND = "usage_warning"


@dataclass(frozen=True)
class Notification:
    outbox_id: int
    org_id: int
    org_name: str
    cycle_start: date
    threshold: int
    kind: str
    usage: int
    included: int
    block_at: int
    reset_date: date
    status: str
    attempts: int


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    role: str


def load(app: oncely.App, outbox_id: int) -> Notification | None:
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        row = db.fetch_one(conn, dialect, "outbox_get", {"outbox_id": outbox_id})
    if row is None:
        return None
    return Notification(
        int(row[0]), int(row[1]), str(row[2]), db.from_epoch_day(row[3]), int(row[4]),
        str(row[5]), int(row[6]), int(row[7]), int(row[8]), db.from_epoch_day(row[9]),
        str(row[10]), int(row[11]),
    )


def recipients(app: oncely.App, org_id: int) -> list[Recipient]:
    """The organization's owners and admins."""
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, dialect, "org_recipients", {"org_id": org_id})
    return [Recipient(str(row[0]), row[1], str(row[2])) for row in rows]


def _day(value: date) -> str:
    return f"{value.day} {value:%B %Y}"


def compose(
    note: Notification, to: list[Recipient], settings: MeteringSettings
) -> EmailMessage:
    link = settings.billing_link(note.org_id)
    message = EmailMessage()
    message["From"] = settings.smtp.sender
    message["To"] = ", ".join(formataddr((r.name or "", r.email)) for r in to)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(note, settings.smtp.sender)
    message["X-Oncely-Notification"] = f"{note.org_id}:{note.cycle_start}:{note.threshold}"
    lines = [
        "Hello,",
        "",
        f'your organization "{note.org_name}" has used {note.usage:,} units (traces, '
        f"observations and scores) in its current billing cycle, which started on "
        f"{_day(note.cycle_start)}.",
        "",
        f"The free plan includes {note.included:,} units per billing cycle; ingestion of new "
        f"events stops at {note.block_at:,} units.",
        "",
    ]
    if note.kind == BLOCKED_KIND:
        message["Subject"] = (
            f"Ingestion blocked for {note.org_name}: {note.block_at:,} free-tier units reached"
        )
        lines += [
            f"Usage has reached the limit of {note.block_at:,} units, so new events are no "
            "longer accepted.",
            f"Ingestion resumes when your usage resets on {_day(note.reset_date)}, or as soon "
            "as you upgrade to a paid plan.",
        ]
    else:
        message["Subject"] = (
            f"{note.org_name} has used {note.usage:,} of its {note.included:,} free-tier units"
        )
        lines += [
            f"You crossed {note.threshold:,} units. Your usage resets on "
            f"{_day(note.reset_date)}.",
        ]
    lines += ["", f"Upgrade or manage billing: {link}", "", "— Billing"]
    message.set_content("\n".join(lines) + "\n")
    return message


def message_id(note: Notification, sender: str) -> str:
    """The same Message-ID for every copy of one outbox row's email."""
    domain = sender.rpartition("@")[2].strip(" >") or "oncely"
    return (f"<billing.{note.org_id}.{note.cycle_start:%Y%m%d}.{note.threshold}."
            f"{note.outbox_id}@{domain}>")


def send(message: EmailMessage, smtp: SmtpSettings,
         on_accepted: Callable[[], None] = lambda: None) -> None:
    """Deliver one message through the configured SMTP server; ``on_accepted`` runs as soon
    as the server took it, before QUIT (a failed QUIT does not undo the delivery)."""
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if smtp.tls == "ssl":
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    try:
        if smtp.tls == "starttls":
            client.starttls(context=context)
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        client.send_message(message)
        on_accepted()
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
        client.close()


def deliver(ctx: oncely.JobContext, settings: MeteringSettings, outbox_id: int) -> dict[str, Any]:
    """The ``send-notification`` handler: send the outbox row's email once and mark it."""
    app = ctx.app
    dialect = db.sql_dialect(app)
    note = load(app, outbox_id)
    if note is None:
        raise oncely.Cancel(f"notification {outbox_id} is not in the outbox")
    if note.status != "pending":
        return {"outbox_id": outbox_id, "status": note.status, "sent": False}
    to = recipients(app, note.org_id)
    status = "sent" if to else "no_recipients"

    def mark() -> None:
        with ctx.fenced() as conn:
            db.run(conn, dialect, "outbox_finish", {
                "outbox_id": outbox_id, "status": status, "now": ctx.now().timestamp(),
                "recipients": ", ".join(r.email for r in to) or None,
            })

    if not to:
        mark()
    else:
        message = compose(note, to, settings)
        ctx.check_fence()  # a zombie attempt must not send what a newer one is sending
        try:
            send(message, settings.smtp, on_accepted=mark)  # marked before QUIT: see above
        except (smtplib.SMTPException, OSError) as exc:
            with ctx.fenced() as conn:
                db.run(conn, dialect, "outbox_attempt",
                       {"outbox_id": outbox_id, "error": f"{type(exc).__name__}: {exc}"[:500]})
            raise
    return {"outbox_id": outbox_id, "status": status, "recipients": [r.email for r in to]}


def outbox_rows(app: oncely.App) -> list[dict[str, Any]]:
    """Every outbox row (for operators and tests)."""
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, dialect, "outbox_list")
    keys = ("id", "org_id", "cycle_start", "threshold", "kind", "usage", "status", "recipients")
    found = [dict(zip(keys, row, strict=True)) for row in rows]
    for item in found:
        item["cycle_start"] = db.from_epoch_day(item["cycle_start"])
    return found


def notifications_for(app: oncely.App, org_id: int, limit: int = 10) -> list[dict[str, Any]]:
    """The organization's latest outbox rows, newest first."""
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, dialect, "outbox_for_org", {"org_id": org_id, "limit": limit})
    return [
        {"id": row[0], "cycle_start": db.from_epoch_day(row[1]), "threshold": row[2],
         "kind": row[3], "usage": row[4], "status": row[5],
         "created_at": db.from_epoch(row[6]), "sent_at": db.from_epoch(row[7]),
         "recipients": row[8]}
        for row in rows
    ]
