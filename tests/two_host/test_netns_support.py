"""The two-host test's preconditions: not root, or a tool missing, is a skip with its
reason (checked without root by pretending)."""

from __future__ import annotations

import shutil

import pytest
from two_host import netns


def test_not_root_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    reason = netns.why_unavailable()
    assert reason is not None and "needs root" in reason


def test_a_missing_tool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    real = shutil.which
    monkeypatch.setattr(netns.shutil, "which", lambda t: None if t == "unshare" else real(t))
    reason = netns.why_unavailable()
    assert reason is not None and "unshare" in reason


def test_names_fit_linux_interface_names() -> None:
    hosts = netns.TwoHosts()
    for a, b in hosts.links.values():
        assert len(a) <= 15 and len(b) <= 15  # IFNAMSIZ - 1
    assert hosts.ns_a != hosts.ns_b
    assert netns.TwoHosts().ns_a != hosts.ns_a  # unique per run
