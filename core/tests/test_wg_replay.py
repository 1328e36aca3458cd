"""The anti-replay window, with the sequence of the Linux kernel's selftest (as ported in
wireguard-go ``replay/replay_test.go``): 34 single checks and six bulk runs."""

from __future__ import annotations

from collections.abc import Callable

from tunnelmesh.proto.replay import WINDOW_SIZE, ReplayWindow
from tunnelmesh.proto.wgmessages import REJECT_AFTER_MESSAGES


def _checker(window: ReplayWindow) -> Callable[[int, bool], None]:
    def t(n: int, expected: bool) -> None:
        assert window.check(n, REJECT_AFTER_MESSAGES) is expected, (n, expected)

    return t


def test_window_size_matches_wireguard() -> None:
    assert WINDOW_SIZE == 8192 - 64


def test_kernel_selftest_sequence() -> None:
    w = ReplayWindow()
    t = _checker(w)
    lim = WINDOW_SIZE + 1
    r = REJECT_AFTER_MESSAGES
    for n, ok in [
        (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
        (lim, True), (lim - 1, True), (lim - 1, False), (lim - 2, True), (2, True),
        (2, False), (lim + 16, True), (3, False), (lim + 16, False), (lim * 4, True),
        (lim * 4 - (lim - 1), True), (10, False), (lim * 4 - lim, False),
        (lim * 4 - (lim + 1), False), (lim * 4 - (lim - 2), True), (lim * 4 + 1 - lim, False),
        (0, False), (r, False), (r - 1, True), (r, False), (r - 1, False), (r - 2, True),
        (r + 1, False), (r + 2, False), (r - 2, False), (r - 3, True), (0, False),
    ]:  # fmt: skip
        t(n, ok)


def test_bulk_runs() -> None:
    w = ReplayWindow()
    t = _checker(w)
    for i in range(1, WINDOW_SIZE + 1):
        t(i, True)
    t(0, True)
    t(0, False)

    w.reset()
    for i in range(2, WINDOW_SIZE + 2):
        t(i, True)
    t(1, True)
    t(0, False)

    w.reset()
    for i in range(WINDOW_SIZE + 1, 0, -1):
        t(i, True)

    w.reset()
    for i in range(WINDOW_SIZE + 2, 1, -1):
        t(i, True)
    t(0, False)

    w.reset()
    for i in range(WINDOW_SIZE, 0, -1):
        t(i, True)
    t(WINDOW_SIZE + 1, True)
    t(0, False)

    w.reset()
    for i in range(WINDOW_SIZE, 0, -1):
        t(i, True)
    t(0, True)
    t(WINDOW_SIZE + 1, True)
