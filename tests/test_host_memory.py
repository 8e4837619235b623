"""The host allocator setting of the command line: freed blocks kept for reuse."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from vitadapter import keep_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def _faults_writing(elements: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(elements)
    block.fill_(1.0)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_a_freed_large_block_is_reused_without_page_faults():
    assert keep_freed_memory()
    elements = 48 << 20 >> 2  # 48 MB: above glibc's own largest mmap threshold (32 MB)
    # glibc's aligned allocation cannot refill the exact hole a freed block leaves, so a
    # block of one size cycles through a few places in the heap (8 here) before each is
    # touched and reused; write it until they all are.
    for _ in range(16):
        _faults_writing(elements)
    # Unmapped on free, the block would take a fault for each of its 12288 pages again.
    assert _faults_writing(elements) < 1000


def test_the_environment_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("VITADAPTER_MALLOC", "system")
    assert keep_freed_memory() is False
