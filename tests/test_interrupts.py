"""Ctrl-C held back through critical sections (facesearch.interrupts)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from facesearch.interrupts import FORCE_AFTER, critical_section, interrupt_pending


@pytest.fixture(autouse=True)
def default_handler() -> Iterator[None]:
    """Every test starts and ends with Python's own SIGINT handler."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_inside_waits_for_the_end_of_the_section() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), critical_section("a test"):
        signal.raise_signal(signal.SIGINT)
        steps.append("after the signal")
        assert interrupt_pending()
        steps.append("end of the section")
    assert steps == ["after the signal", "end of the section"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not interrupt_pending()


def test_nested_sections_stop_at_the_outermost_end() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), critical_section("outer"):
        with critical_section("inner"):
            signal.raise_signal(signal.SIGINT)
        steps.append("between")
        with critical_section("inner again"):
            steps.append("second inner")
        steps.append("outer end")
    assert steps == ["between", "second inner", "outer end"]


def test_without_ctrl_c_nothing_happens(caplog: pytest.LogCaptureFixture) -> None:
    with critical_section("a test"):
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not caplog.records


def test_ctrl_c_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(KeyboardInterrupt), critical_section("saving the thing"):
        signal.raise_signal(signal.SIGINT)
    assert caplog.messages == [
        f"interrupt: stopping once saving the thing is done (press Ctrl-C {FORCE_AFTER - 1} "
        "more times to stop at once)"
    ]


def test_repeated_ctrl_c_stops_at_once() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), critical_section("a stuck commit"):
        for i in range(FORCE_AFTER + 2):
            steps.append(i)
            signal.raise_signal(signal.SIGINT)
    assert steps == list(range(FORCE_AFTER))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_previous_handler_gets_the_signal_after_the_section() -> None:
    got: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    with critical_section("a test"):
        signal.raise_signal(signal.SIGINT)
        assert got == []
    assert got == [signal.SIGINT]


def test_an_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with critical_section("a test"):
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_other_threads_are_left_alone() -> None:
    seen: list[object] = []

    def work() -> None:
        with critical_section("in a thread"):
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]


def test_an_error_in_the_section_still_ends_in_the_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt) as info, critical_section("a test"):
        signal.raise_signal(signal.SIGINT)
        raise OSError("disk full")
    assert isinstance(info.value.__context__, OSError)
