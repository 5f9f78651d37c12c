"""The demo's report: one dict (``report.json``), a side-by-side table for the terminal, and
``report.html`` (the same table and the expected-versus-actual charts, :mod:`.page`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import oncely
from oncely.redaction import mask_url
from oncely_billing.demo.dataset import Dataset, Prepared
from oncely_billing.demo.phase import PhaseRun
from oncely_billing.demo.plan import STRIPE_RATE, STRIPE_RATE_DEFAULT, Plan

PHASES = ("unsafe", "guarded")
TITLES = {"unsafe": "unsafe (incident config)", "guarded": "guarded (oncely defaults)"}
FREE_TIER = "free-tier-thresholds"
SCHEDULE_TITLES = {FREE_TIER: "free-tier job (:35)", "metering-stripe-usage": "Stripe job (:05)"}
# The incident (README, "Why"): organization writes seen in 20 minutes, and expected per hour.
INCIDENT_WRITES, INCIDENT_MINUTES, INCIDENT_EXPECTED = 517_788, 20, 50_000


def summary(plan: Plan, dataset: Dataset, prepared: dict[str, Prepared],
            runs: dict[str, PhaseRun], results: dict[str, dict[str, Any]],
            checks: list[tuple[str, bool, str]], seconds: float) -> dict[str, Any]:
    failed = [(name, evidence) for name, held, evidence in checks if not held]
    any_store = next(iter(prepared.values()))
    phases = {name: phase_entry(plan, runs[name], results[name]) for name in PHASES}
    return {
        "oncely_version": oncely.__version__,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "passed": not failed,
        "reason": None if not failed else f"{failed[0][0]} ({failed[0][1]})",
        "seconds": round(seconds, 1),
        "files": {"html": str(plan.out / "report.html"), "json": str(plan.out / "report.json"),
                  "logs": str(plan.out / "logs")},
        "options": {"orgs": plan.orgs, "workers": plan.workers, "hours": plan.hours,
                    "speed": plan.speed, "quick": plan.quick,
                    "store": "postgresql" if plan.store.startswith("postgres") else "sqlite",
                    "day_start": plan.origin.isoformat(), "day_end": plan.end.isoformat(),
                    "seconds_per_simulated_hour": round(3600 / plan.speed, 2)},
        "dataset": {"orgs": dataset.orgs, "projects": dataset.projects,
                    "paid_orgs": dataset.paid_orgs, "events": dataset.events,
                    "events_until": dataset.end.isoformat(), "seconds": round(dataset.seconds, 1),
                    "surges": list(dataset.surges),
                    "before_the_day": any_store.before,
                    "before_the_day_seconds": round(any_store.before_seconds, 1)},
        "stripe_setup": {
            "customers": any_store.stripe_customers,
            "client_rate": STRIPE_RATE, "client_rate_default": STRIPE_RATE_DEFAULT,
            "note": (f"Stripe customer ids kept for {any_store.stripe_customers} of "
                     f"{dataset.orgs:,} organizations and the client throttle raised from "
                     f"{STRIPE_RATE_DEFAULT:g} to {STRIPE_RATE:g} calls/s, so the local stub "
                     "keeps up at demo speed"),
        },
        "phases": phases,
        "invariants": [{"name": name, "held": held, "evidence": evidence}
                       for name, held, evidence in checks],
        "explanation": explanation(phases),
    }


def phase_entry(plan: Plan, run: PhaseRun, results: dict[str, Any]) -> dict[str, Any]:
    """One phase in the report: its configuration, its store (masked by oncely's one masking
    function, like every URL oncely shows), its timeline and its figures."""
    return {
        "config": run.config.describe(plan),
        "store": mask_url(run.url),
        "real_seconds": round(run.real_seconds, 1),
        "worker_starts": run.worker_starts,
        "timeline": [{"at": note.at, "what": note.what} for note in run.notes],
        **results,
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def write_html(path: Path, report: dict[str, Any]) -> None:
    from oncely_billing.demo.page import render

    path.write_text(render(report, rows(report)))


# the side-by-side rows, shared by the terminal and the HTML --------------------------------------

def ratio_cell(figures: dict[str, Any]) -> str:
    return f"{figures['runs']} / {figures['expected']} = {figures['ratio']:.2f}x"


def pair(a: Any, b: Any) -> str:
    return f"{a:,} / {b:,}"


def rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, unsafe, guarded) for the comparison table."""
    unsafe, guarded = (report["phases"][name] for name in PHASES)
    table: list[tuple[str, str, str]] = []

    def add(label: str, render: Any) -> None:
        table.append((label, str(render(unsafe)), str(render(guarded))))

    for name, title in SCHEDULE_TITLES.items():
        add(f"{title} runs / slots", lambda p, n=name: ratio_cell(p["schedules"][n]))
        if name == FREE_TIER:
            add("  x org rows written per run",
                lambda p: f"{p['write_explosion']['rows_per_run']:,.0f}")
            add("  = org writes per slot",
                lambda p: f"{p['write_explosion']['writes_per_slot']:,}")
        add("  attempts / handed over", lambda p, n=name: pair(
            p["schedules"][n]["attempts_started"], p["schedules"][n]["handed_over"]))
        add("  runs for no slot / overlapping", lambda p, n=name: pair(
            p["schedules"][n]["not_tied_to_a_slot"], p["schedules"][n]["overlapping_starts"]))
    add("org writes per hour, mean / max", lambda p: pair(
        round(p["org_writes"]["per_hour_mean"]), p["org_writes"]["per_hour_max"]))
    add("emails sent / sent more than once", lambda p: pair(
        p["emails"]["sent"], p["emails"]["sent_more_than_once"]))
    add("Stripe accepted / duplicates", lambda p: pair(
        p["stripe"]["accepted"], p["stripe"]["duplicates_rejected"]))
    add("Stripe ids accepted twice",
        lambda p: p["stripe"]["duplicate_identifiers_accepted"])
    add("Stripe hours billed / due", lambda p: pair(p["stripe"]["hours_billed_in_day"],
                                                    p["stripe"]["hours_due"]))
    add("takeovers",
        lambda p: sum(s["handed_over"] for s in p["schedules"].values()))
    add("fenced writes rejected", lambda p: p["fenced_writes_rejected"])
    add("dead letters", lambda p: sum(p["dead_letters"].values()))
    add("watchdog flagged", watchdog_cell)
    add("doctor at the end of the day", doctor_cell)
    return table


def doctor_cell(phase: dict[str, Any]) -> str:
    doctor = phase["doctor"]
    if doctor.get("healthy"):
        return "healthy"
    found = doctor.get("findings", [])
    problems = sum(1 for item in found if item["severity"] == "problem")
    return f"{plural(problems, 'problem')}, {plural(len(found) - problems, 'warning')}"


def watchdog_cell(phase: dict[str, Any]) -> str:
    """The worst finding of each kind and schedule, raised during the day or at its end."""
    found = phase["watchdog"]["raised_during_run"] + phase["watchdog"]["final_check"]
    if not found:
        return "nothing"
    worst: dict[str, float] = {}
    for item in found:
        subject = item["summary"].split(":")[0].removeprefix("schedule ")
        key = f"{item['kind']} {subject}"
        ratio = item.get("ratio") or 0.0
        worst[key] = max(worst.get(key, 0.0), float(ratio))
    parts = [f"{key} ({ratio:.1f}x)" if ratio and key.startswith("too_many") else key
             for key, ratio in sorted(worst.items())]
    return "; ".join(parts)


def explanation(phases: dict[str, Any]) -> list[str]:
    """A few lines saying what the numbers mean, written from the numbers."""
    unsafe, guarded = phases["unsafe"], phases["guarded"]
    u_free = unsafe["schedules"]["free-tier-thresholds"]
    u_stripe = unsafe["schedules"]["metering-stripe-usage"]
    g_schedules = guarded["schedules"].values()
    overlaps = u_free["overlapping_starts"] + u_stripe["overlapping_starts"]
    handed = u_free["handed_over"] + u_stripe["handed_over"]
    strays = u_free["not_tied_to_a_slot"] + u_stripe["not_tied_to_a_slot"]
    lines = [
        "Runs vs expected: the handler runs of each schedule against its slots in the day. "
        "The incident ran its hourly job ~31x; oncely's promise is 1.00x, one run per slot.",
        f"Unsafe: {unsafe['worker_starts']} worker starts each enqueued an immediate run of both "
        f"jobs ({strays} runs belong to no slot); runs overlapped ({overlaps} overlapping "
        "starts); leases nobody renewed expired under running jobs, which were handed to "
        f"another worker ({handed} times) while the first kept running, and every failure was "
        "retried up to 5 times.",
        f"Guarded: the same engine with its defaults, and oncely's job. Start-up triggers name "
        "the slot, so "
        f"{guarded['worker_starts']} worker starts ran nothing twice; the SIGKILLed and the "
        f"frozen worker's runs were handed over once their leases expired "
        f"({sum(s['handed_over'] for s in g_schedules)} takeovers, no slot lost or run twice), "
        f"and {plural(guarded['fenced_writes_rejected'], 'write')} of the zombie "
        f"{'was' if guarded['fenced_writes_rejected'] == 1 else 'were'} refused by its fence "
        "when it woke up.",
    ]
    lines.append(writes_line(unsafe, guarded))
    lines.append(emails_line(unsafe["emails"], guarded["emails"]))
    u_pay, g_pay = unsafe["stripe"], guarded["stripe"]
    lines.append(
        f"Stripe: unsafe runs sent the same hours again and again — {u_pay['wasted_calls']:,} "
        f"calls wasted, {u_pay['duplicates_rejected']:,} rejected as duplicates by identifier — "
        f"and billed {u_pay['hours_billed_in_day']} of {u_pay['hours_due']} hours due; guarded "
        f"billed {g_pay['hours_billed_in_day']} with {g_pay['duplicates_rejected']} duplicate(s) "
        "rejected. No identifier was ever accepted twice: Stripe's dedup by identifier holds "
        "either way; the wasted calls"
        + (" and the unbilled hours" if u_pay["hours_billed_in_day"] < u_pay["hours_due"] else "")
        + " are the unsafe configuration's.")
    return lines


def writes_line(unsafe: dict[str, Any], guarded: dict[str, Any]) -> str:
    """Both multipliers of the organization writes, side by side, and the incident's figure."""
    u, g = unsafe["write_explosion"], guarded["write_explosion"]
    incident_per_hour = INCIDENT_WRITES * 60 / INCIDENT_MINUTES
    every = ("each run that finished rewrote every organization"
             if u["rows_per_batch_max"] >= u["orgs"] else
             f"at most {u['rows_per_batch_max']:,} organizations at once")
    return (
        f"Org writes = runs per slot (the engine's multiplier) x rows written per run (the "
        f"job's). Unsafe: {u['runs_per_slot']:.2f} x {u['rows_per_run']:,.0f} = "
        f"{u['writes_per_slot']:,} per slot, {u['writes_per_hour_mean']:,.0f} per hour on "
        f"average and {u['writes_per_hour_max']:,} in the worst hour, for {u['orgs']:,} "
        f"organizations: the incident's job recounts and rewrites them all on every run "
        f"({every}), and the engine runs it again and again. Guarded: {g['runs_per_slot']:.2f} x "
        f"{g['rows_per_run']:,.0f} = {g['writes_per_slot']:,}: one run per slot, and oncely's "
        "job writes only the organizations whose usage or state changed. The incident: "
        f"{INCIDENT_WRITES:,} writes in {INCIDENT_MINUTES} minutes, {incident_per_hour:,.0f} per "
        f"hour where {INCIDENT_EXPECTED:,} were expected "
        f"({incident_per_hour / INCIDENT_EXPECTED:.0f}x).")


def emails_line(unsafe: dict[str, Any], guarded: dict[str, Any]) -> str:
    head = (f"Emails: unsafe sent {unsafe['sent']:,} for {unsafe['distinct_notifications']:,} "
            f"notifications, {plural(unsafe['sent_more_than_once'], 'notification')} more than "
            f"once ({plural(unsafe['duplicates'], 'extra copy')}); guarded sent "
            f"{guarded['sent']:,}, {guarded['sent_more_than_once']} more than once. ")
    if unsafe["sent_more_than_once"]:
        head += ("The incident's job emails in the middle of its run, before the new state "
                 "commits, with no outbox: every run that overlaps it, takes it over or retries "
                 "it sends the same email again. ")
    return head + ("oncely's job writes an outbox row, unique per organization, cycle and "
                   "threshold, in the transaction that commits the state; one send job keeps "
                   "that promise.")


def plural(count: int, word: str) -> str:
    if count == 1:
        return f"1 {word}"
    return f"{count:,} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def render_terminal(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="oncely demo: the same billing day, unsafe and guarded",
                  title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    for name in PHASES:
        table.add_column(TITLES[name], overflow="fold", min_width=15)
    for label, unsafe, guarded in rows(report):
        table.add_row(label, unsafe, guarded)
    console.print(table)
    for line in report["explanation"]:
        console.print(f"- {line}", soft_wrap=False)
    console.print(f"- {report['stripe_setup']['note']}.")
    for name in PHASES:
        for note in report["phases"][name]["timeline"]:
            console.print(f"  {name} {note['at'][11:16]}  {note['what']}", soft_wrap=True)
    console.print("[bold]guarded run invariants[/bold]")
    for check in report["invariants"]:
        mark = "[green]ok[/green]  " if check["held"] else "[red]FAIL[/red]"
        console.print(f"  {mark} {check['name']}: {check['evidence']}", soft_wrap=True)
    console.print(f"report: {report['files']['html']} and report.json; stores: "
                  f"{report['phases']['unsafe']['store']}, {report['phases']['guarded']['store']}"
                  f"; took {report['seconds']:.0f} s", soft_wrap=True)
