"""The ``oncely demo`` command: options only; the demo itself is :func:`.demo.run`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--orgs", type=click.IntRange(10, 1_000_000),
              help="Organizations in the dataset (default 5,000; --quick: 1,000).")
@click.option("--workers", type=click.IntRange(2, 32),
              help="Worker processes per phase (default 4).")
@click.option("--hours", type=click.FloatRange(3, 24 * 14),
              help="Simulated hours per phase (default 24; --quick: 5).")
@click.option("--speed", type=click.FloatRange(10, 20_000),
              help="Simulated seconds per real second (default 1500, an hour every 2.4 s, up to "
                   "5,000 orgs; slower above).")
@click.option("--store", "store_url",
              help="postgresql://… (a fresh schema per phase) or sqlite:///file.db (default: "
                   "fresh SQLite files under --out).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("oncely-demo"), show_default=True,
              help="Where the dataset, the stores, the logs and the report go.")
@click.option("--quick", is_flag=True,
              help="A shortened run (CI): 1,000 orgs, 5 hours, an hour every 3 s.")
def demo(orgs: int | None, workers: int | None, hours: float | None, speed: float | None,
         store_url: str | None, out_dir: Path, quick: bool) -> None:
    """Replay the billing incident on real workers, unsafely and then guarded, and report.

    Exit 0 when the guarded run held every invariant (one run per slot, no overlap, every slot
    in the ledger, no duplicate email or Stripe event, a quiet watchdog); 1 otherwise, with the
    reason on the last line."""
    from oncely_billing.demo.demo import run
    from oncely_billing.demo.plan import DemoOptions

    options = DemoOptions(orgs=orgs, workers=workers, hours=hours, speed=speed,
                          store=store_url, out=out_dir, quick=quick)
    raise SystemExit(run(options))
