"""cas's log (cas/logs.py): ``logging`` loads only when cas logs, and a set-up asked for before
that is applied before the first record, in a real process and in this one."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cas import logs

from tests.conftest import run_cas_process


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=True)


def test_configure_waits_for_the_first_record_when_logging_is_not_loaded() -> None:
    result = _run("""
        import sys
        from cas import logs
        def setup(logger):
            import logging
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("set up: %(message)s"))
            logger.handlers[:] = [handler]
            logger.propagate = False
        logs.configure(setup)
        print("logging loaded:", "logging" in sys.modules)
        logs.log.warning("first")
        logs.log.warning("second")
        print("logging loaded:", "logging" in sys.modules)
    """)
    assert result.stdout.splitlines() == [
        "logging loaded: False", "set up: first", "set up: second", "logging loaded: True",
    ]


def test_a_later_configure_replaces_one_still_waiting() -> None:
    result = _run("""
        import sys
        from cas import logs
        def setup(tag):
            def apply(logger):
                import logging
                handler = logging.StreamHandler(sys.stdout)
                handler.setFormatter(logging.Formatter(tag + ": %(message)s"))
                logger.handlers[:] = [handler]
                logger.propagate = False
            return apply
        logs.configure(setup("one"))
        logs.configure(setup("two"))
        logs.log.error("record")
    """)
    assert result.stdout.splitlines() == ["two: record"]


def test_configure_applies_at_once_when_logging_is_loaded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("cas")
    saved = logger.level
    try:
        logs.configure(lambda log: log.setLevel(logging.DEBUG))
        assert logger.level == logging.DEBUG
        assert logs.log.isEnabledFor(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="cas")
        logs.log.debug("through the stand-in")
        assert [record.getMessage() for record in caplog.records] == ["through the stand-in"]
    finally:
        logger.setLevel(saved)


@pytest.mark.parametrize("quiet", [False, True])
def test_a_warning_of_a_command_that_loaded_no_logging_is_one_cas_line(
    tmp_path: Path, quiet: bool
) -> None:
    """`cas path` imports no logging, yet a warning at open (an unknown CAS_ variable) is still
    a ``cas:`` line on stderr, and -q still leaves it out."""
    result = run_cas_process(*(["-q"] if quiet else []), "ls",
                             env={"CAS_NO_SUCH_SETTING": "1", "CAS_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    expected = [] if quiet else [
        "cas: environment variable CAS_NO_SUCH_SETTING is not a cas setting; ignored"]
    assert result.stderr.decode().splitlines() == expected
