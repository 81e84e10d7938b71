"""keep_freed_memory: glibc then serves a large tensor again without new page faults."""

import platform
import resource
import sys

import pytest
import torch

from mixitcli.allocator import keep_freed_memory

glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not glibc, reason="mallopt settings are glibc's")
def test_large_tensors_reuse_freed_memory():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    # 40 MB, above glibc's largest mmap threshold: with its defaults, each costs 10,240 page faults.
    # Aligned blocks are not reused at once (their split-off edges coalesce later): warm up first.
    for _ in range(12):
        torch.ones(10 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(10 << 20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 1000, f"{faults} page faults for 4 reused 40 MB tensors"


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() is False
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
