import os

import pytest
import torch

# Tests must not depend on (or pollute) the user's cache unless asked.
os.environ.setdefault("MIXPREC_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache-test"))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_builtin_or_skip(name: str):
    """The built-in adapter, or a skip naming the missing file or package."""
    from mixprec.builtin import get_builtin
    from mixprec.errors import MissingDataError, SpecError
    try:
        builtin = get_builtin(name)
        model = builtin.model()
    except MissingDataError as exc:
        pytest.skip(str(exc))
    except SpecError as exc:  # a missing optional package
        pytest.skip(str(exc))
    return builtin, model


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that needs real data missing here (../shared/data) is skipped with the message naming
    the file, wherever in the test the data is first read."""
    from mixprec.errors import MissingDataError
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and call.excinfo is not None and call.excinfo.errisinstance(MissingDataError):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")
