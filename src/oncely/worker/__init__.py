"""The worker: claim loop, handler threads, lease keeper and job context."""

from oncely.worker.context import JobContext
from oncely.worker.worker import Worker

__all__ = ["JobContext", "Worker"]
