"""The former name of :mod:`oncely.store.controls` (queue controls), kept so that imports written
against it keep working; new code imports :mod:`oncely.store.controls`."""

from oncely.store.controls import *  # noqa: F403
from oncely.store.controls import __all__ as __all__
