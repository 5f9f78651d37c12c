"""Store operations written once against a :class:`~oncely.store.dialect.Dialect`."""
