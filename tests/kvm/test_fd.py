"""FileDescriptor: the one owner of a host fd, under the KVM handles and `EventFd`."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from pyvmm.io.eventfd import EventFd
from pyvmm.kvm import Kvm
from pyvmm.kvm.fd import FileDescriptor


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def test_close_closes_the_fd_once() -> None:
    read, write = os.pipe()
    os.close(write)
    owner = FileDescriptor(read)
    assert owner.fileno() == read and not owner.closed
    owner.close()
    assert owner.closed and owner.fileno() == -1 and not _is_open(read)
    reused = os.open(os.devnull, os.O_RDONLY)  # may get the same number back
    try:
        owner.close()  # twice: must not close what now has that number
        assert _is_open(reused)
    finally:
        os.close(reused)


def test_the_context_manager_gives_the_subclass_and_closes() -> None:
    with EventFd() as event:
        assert isinstance(event, EventFd)
        fd = event.fileno()
        assert _is_open(fd)
    assert event.closed and not _is_open(fd)


def test_a_half_built_owner_closes_as_a_no_op() -> None:
    class Failing(FileDescriptor):
        def __init__(self) -> None:
            raise OSError(errno.EMFILE, "no fd")

    with pytest.raises(OSError):
        Failing()
    owner = FileDescriptor.__new__(FileDescriptor)  # __init__ never ran
    owner.close()
    assert owner.closed


def test_close_waits_for_a_user_holding_the_lock() -> None:
    """`EventFd.signal` writes under the lock; a close from another thread must not
    take the fd away in the middle."""
    with EventFd() as event:
        closed_at: list[float] = []
        with event._lock:
            closer = threading.Thread(target=lambda: (event.close(), closed_at.append(time.monotonic())))
            closer.start()
            time.sleep(0.1)
            assert not event.closed and not closed_at
            released = time.monotonic()
        closer.join(5)
        assert event.closed and closed_at[0] >= released


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm")
def test_the_kvm_handles_and_eventfd_share_one_owner() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm, EventFd() as event:
        for owner in (kvm, vm, event):
            assert isinstance(owner, FileDescriptor)
            assert owner.fileno() >= 0 and _is_open(owner.fileno())
        vm_fd = vm.fileno()
    assert vm.closed and not _is_open(vm_fd)
