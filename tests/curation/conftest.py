import pytest

from soraplan.core.cli import run_command
from soraplan.curation.cli import COMMANDS, DESCRIPTION, PROG


@pytest.fixture
def curate():
    """`soraplan-curate ARGS...` run in this process; returns its exit code."""
    return lambda *argv: run_command(PROG, DESCRIPTION, COMMANDS, [str(a) for a in argv])
