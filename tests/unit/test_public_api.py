import oncely

EXPECTED = {
    "App", "ArgsMismatch", "ArgsNotJSON", "Cancel", "Clock", "ConfigError", "FenceRejected",
    "FrozenClock", "InvalidSchedule", "InvalidURL", "Job", "JobContext", "JobHandle", "JobState",
    "Keep", "NotFound", "OncelyError", "Overlap", "Retention", "Retry", "RetryPolicy",
    "ScheduleSpec", "SchemaMismatch", "Settings", "SingletonBusy", "SlotOutcome", "StoreError",
    "StoreUnavailable", "SystemClock", "Task", "UnknownTask", "WarpClock", "WatchdogConfig",
    "Worker", "__version__",
}


def test_public_api_is_exactly_all():
    assert set(oncely.__all__) == EXPECTED
    for name in oncely.__all__:
        assert hasattr(oncely, name), name


def test_every_error_derives_from_the_one_root():
    for name in oncely.__all__:
        value = getattr(oncely, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, oncely.OncelyError), name


def test_the_error_tree_in_errors_py_names_every_error():
    import oncely.errors as errors

    tree = errors.__doc__ or ""
    for name, value in vars(errors).items():
        if isinstance(value, type) and issubclass(value, errors.OncelyError):
            assert f" {name} " in tree, f"draw {name} in the tree of errors.py's docstring"
