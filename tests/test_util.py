"""Small shared helpers of the core."""

from __future__ import annotations

import platform

import torch

from icldistill.core.util import release_freed_memory


def test_release_freed_memory_returns_what_it_could_do():
    big = torch.ones(4_000_000, dtype=torch.float64)
    del big
    done = release_freed_memory()
    assert isinstance(done, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert done
    assert release_freed_memory() == done            # the library is looked up once
