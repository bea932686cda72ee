"""virtio-mmio version 2 (virtio 1.2 §4.2) driven through its registers the way
Linux's drivers/virtio/virtio_mmio.c does, with the test driver's rings in a real
GuestMemory; QueueNotify through a real KVM_IOEVENTFD on /dev/kvm."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from guest_code import MMIO_ADDRESS, real_mode_guest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtio.driver import Driver
from virtio.handshake import ACK, DRIVER, DRIVER_OK, FEATURES_OK

from pyvmm.io.thread import IoThread
from pyvmm.kvm import Cap, ExitReason, Vcpu
from pyvmm.memory import GuestMemory
from pyvmm.virtio import DeviceStatus, Feature
from pyvmm.virtio.device import Activation, DeviceType, VirtioDevice
from pyvmm.virtio.mmio import (
    CONFIG_OFFSET,
    INTERRUPT_CONFIG_CHANGE,
    INTERRUPT_USED_BUFFER,
    MAGIC,
    VENDOR_ID,
    WINDOW_SIZE,
    MmioNotifiers,
    Reg,
    VirtioMmio,
)

NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)
ECHO_FEATURE = 1 << 0
FEATURES = int(Feature.VERSION_1 | Feature.INDIRECT_DESC | Feature.EVENT_IDX) | ECHO_FEATURE
QUEUE_SIZE = 8


class Echo(VirtioDevice):
    """Two queues; copies each chain's readable bytes into its writable part."""

    device_type = DeviceType.ENTROPY
    kind = "test-device"
    name = "echo"

    def __init__(self) -> None:
        self.activation: Activation | None = None
        self.notified: list[tuple[int, str]] = []  # (queue, thread name)
        self.done = threading.Event()

    @property
    def queue_sizes(self) -> Sequence[int]:
        return (QUEUE_SIZE, QUEUE_SIZE)

    def device_features(self) -> int:
        return ECHO_FEATURE

    def config(self) -> bytes:
        return b"\x11\x22\x33\x44\x55\x66\x77\x88"

    def write_config(self, offset: int, data: bytes) -> None:
        pass

    def activate(self, activation: Activation) -> None:
        self.activation = activation

    def notify(self, queue: int) -> None:
        self.notified.append((queue, threading.current_thread().name))
        assert self.activation is not None
        virtqueue = self.activation.queues[queue]
        while (chain := virtqueue.pop()) is not None:
            virtqueue.add_used(chain.head, chain.write(chain.read()))
        if virtqueue.needs_interrupt():
            self.activation.interrupt.used_buffer(queue)
        self.done.set()

    def reset(self) -> None:
        self.activation = None

    def close(self) -> None:
        pass


class Line:
    """An interrupt line that remembers its level."""

    def __init__(self) -> None:
        self.level = False
        self.changes = 0

    def set_level(self, high: bool) -> None:
        self.level = high
        self.changes += 1


@pytest.fixture
def line() -> Line:
    return Line()


@pytest.fixture
def mmio(memory: GuestMemory, line: Line) -> VirtioMmio:
    return VirtioMmio(Echo(), memory, line)


def read(mmio: VirtioMmio, reg: int) -> int:
    return mmio.read(reg, 4)


def write(mmio: VirtioMmio, reg: int, value: int) -> None:
    mmio.write(reg, 4, value)


def negotiate(mmio: VirtioMmio, features: int = FEATURES) -> int:
    """vm_finalize_features: ACK, DRIVER, both feature windows, FEATURES_OK; the
    status read back."""
    write(mmio, Reg.STATUS, ACK)
    write(mmio, Reg.STATUS, ACK | DRIVER)
    for select in (0, 1):
        write(mmio, Reg.DRIVER_FEATURES_SEL, select)
        write(mmio, Reg.DRIVER_FEATURES, (features >> (32 * select)) & 0xFFFF_FFFF)
    write(mmio, Reg.STATUS, ACK | DRIVER | FEATURES_OK)
    return read(mmio, Reg.STATUS)


def setup_queue(mmio: VirtioMmio, index: int, driver: Driver) -> None:
    """vm_setup_vq: select, check it is free, size, the three addresses, ready."""
    write(mmio, Reg.QUEUE_SEL, index)
    assert read(mmio, Reg.QUEUE_READY) == 0
    assert read(mmio, Reg.QUEUE_NUM_MAX) >= driver.size
    write(mmio, Reg.QUEUE_NUM, driver.size)
    for low, address in ((Reg.QUEUE_DESC_LOW, driver.desc), (Reg.QUEUE_DRIVER_LOW, driver.avail),
                         (Reg.QUEUE_DEVICE_LOW, driver.used)):  # fmt: skip
        write(mmio, low, address & 0xFFFF_FFFF)
        write(mmio, low + 4, address >> 32)
    write(mmio, Reg.QUEUE_READY, 1)


def start(mmio: VirtioMmio, memory: GuestMemory, features: int = FEATURES) -> list[Driver]:
    indirect = bool(features & Feature.INDIRECT_DESC)
    drivers = [
        Driver(memory, QUEUE_SIZE, desc=0x1000, data=0x10000, indirect=indirect),
        Driver(memory, QUEUE_SIZE, desc=0x4000, data=0x40000, indirect=indirect),
    ]
    assert negotiate(mmio, features) & FEATURES_OK
    for index, driver in enumerate(drivers):
        setup_queue(mmio, index, driver)
    write(mmio, Reg.STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    return drivers


# --- identity and configuration space ---------------------------------------------------


def test_the_device_identifies_itself_as_version_2(mmio: VirtioMmio) -> None:
    assert read(mmio, Reg.MAGIC_VALUE) == MAGIC == int.from_bytes(b"virt", "little")
    assert read(mmio, Reg.VERSION) == 2  # never 1: a legacy-only driver gives up here
    assert read(mmio, Reg.DEVICE_ID) == DeviceType.ENTROPY == 4
    assert read(mmio, Reg.VENDOR_ID) == VENDOR_ID


def test_configuration_space_at_0x100_takes_any_width(mmio: VirtioMmio) -> None:
    assert mmio.read(CONFIG_OFFSET, 4) == 0x44332211
    assert mmio.read(CONFIG_OFFSET + 1, 1) == 0x22
    assert mmio.read(CONFIG_OFFSET + 2, 2) == 0x4433
    assert mmio.read(CONFIG_OFFSET, 8) == 0x8877665544332211
    assert mmio.read(CONFIG_OFFSET + 8, 4) == 0  # past the device's configuration
    assert mmio.read(WINDOW_SIZE - 4, 4) == 0


def test_control_registers_take_only_aligned_32_bit_accesses(mmio: VirtioMmio) -> None:
    assert mmio.read(Reg.MAGIC_VALUE, 2) == 0
    assert mmio.read(Reg.MAGIC_VALUE, 1) == 0
    assert mmio.read(Reg.MAGIC_VALUE + 2, 4) == 0
    assert mmio.read(Reg.MAGIC_VALUE, 8) == 0
    mmio.write(Reg.STATUS, 1, ACK)
    mmio.write(Reg.STATUS, 2, ACK)
    mmio.write(Reg.STATUS + 1, 4, ACK)
    assert read(mmio, Reg.STATUS) == 0
    write(mmio, Reg.STATUS, ACK)
    assert read(mmio, Reg.STATUS) == ACK


def test_no_shared_memory_regions_read_as_length_minus_1(mmio: VirtioMmio) -> None:
    write(mmio, Reg.SHM_SEL, 0)
    assert read(mmio, Reg.SHM_LEN_LOW) == read(mmio, Reg.SHM_LEN_HIGH) == 0xFFFF_FFFF


# --- features -----------------------------------------------------------------------------


def test_device_features_come_in_32_bit_windows(mmio: VirtioMmio) -> None:
    write(mmio, Reg.DEVICE_FEATURES_SEL, 0)
    low = read(mmio, Reg.DEVICE_FEATURES)
    assert low & ECHO_FEATURE and low & Feature.INDIRECT_DESC and low & Feature.EVENT_IDX
    write(mmio, Reg.DEVICE_FEATURES_SEL, 1)
    assert read(mmio, Reg.DEVICE_FEATURES) == int(Feature.VERSION_1) >> 32
    write(mmio, Reg.DEVICE_FEATURES_SEL, 2)
    assert read(mmio, Reg.DEVICE_FEATURES) == 0


def test_the_drivers_features_are_what_it_wrote(mmio: VirtioMmio) -> None:
    assert negotiate(mmio, int(Feature.VERSION_1) | ECHO_FEATURE) & FEATURES_OK
    assert mmio.core.accepted == int(Feature.VERSION_1) | ECHO_FEATURE


def test_a_driver_without_version_1_is_refused_at_features_ok(mmio: VirtioMmio) -> None:
    assert not negotiate(mmio, ECHO_FEATURE) & FEATURES_OK


# --- queues -------------------------------------------------------------------------------


def test_queue_registers_program_the_selected_queue(mmio: VirtioMmio, memory: GuestMemory) -> None:
    start(mmio, memory)
    for index, (desc, ready) in enumerate(((0x1000, True), (0x4000, True))):
        queue = mmio.core.queues[index]
        assert (queue.size, queue.desc_table, queue.ready) == (QUEUE_SIZE, desc, ready)
        assert queue.avail_ring == desc + 16 * QUEUE_SIZE
    write(mmio, Reg.QUEUE_SEL, 1)
    assert read(mmio, Reg.QUEUE_READY) == 1
    write(mmio, Reg.QUEUE_SEL, 2)  # past the last queue
    assert read(mmio, Reg.QUEUE_NUM_MAX) == 0
    assert read(mmio, Reg.QUEUE_READY) == 0


def test_queue_registers_are_fixed_after_driver_ok(mmio: VirtioMmio, memory: GuestMemory) -> None:
    start(mmio, memory)
    write(mmio, Reg.QUEUE_SEL, 0)
    write(mmio, Reg.QUEUE_NUM, 2)
    write(mmio, Reg.QUEUE_DESC_LOW, 0x8000)
    write(mmio, Reg.QUEUE_READY, 0)
    queue = mmio.core.queues[0]
    assert (queue.size, queue.desc_table, queue.ready) == (QUEUE_SIZE, 0x1000, True)


def test_the_high_halves_of_queue_addresses_count(mmio: VirtioMmio, memory: GuestMemory) -> None:
    assert negotiate(mmio) & FEATURES_OK
    write(mmio, Reg.QUEUE_SEL, 0)
    write(mmio, Reg.QUEUE_DESC_LOW, 0x1000)
    write(mmio, Reg.QUEUE_DESC_HIGH, 0x1)
    assert mmio.core.queues[0].desc_table == 0x1_0000_1000
    write(mmio, Reg.QUEUE_READY, 1)  # the table would be at 4 GiB + 4 KiB: outside RAM
    assert read(mmio, Reg.QUEUE_READY) == 0
    assert read(mmio, Reg.STATUS) & NEEDS_RESET


def test_a_queue_size_that_is_no_power_of_2_is_a_device_error(mmio: VirtioMmio, memory: GuestMemory) -> None:
    driver = Driver(memory, QUEUE_SIZE)
    assert negotiate(mmio) & FEATURES_OK
    write(mmio, Reg.QUEUE_SEL, 0)
    write(mmio, Reg.QUEUE_NUM, 6)
    write(mmio, Reg.QUEUE_DESC_LOW, driver.desc)
    write(mmio, Reg.QUEUE_DRIVER_LOW, driver.avail)
    write(mmio, Reg.QUEUE_DEVICE_LOW, driver.used)
    write(mmio, Reg.QUEUE_READY, 1)
    assert read(mmio, Reg.QUEUE_READY) == 0
    assert read(mmio, Reg.STATUS) & NEEDS_RESET


def test_queue_ready_0_before_driver_ok_takes_the_queue_back(mmio: VirtioMmio, memory: GuestMemory) -> None:
    assert negotiate(mmio) & FEATURES_OK
    setup_queue(mmio, 0, Driver(memory, QUEUE_SIZE))
    assert read(mmio, Reg.QUEUE_READY) == 1
    write(mmio, Reg.QUEUE_READY, 0)  # vm_del_vq, on Linux's error path
    assert read(mmio, Reg.QUEUE_READY) == 0
    setup_queue(mmio, 0, Driver(memory, QUEUE_SIZE, desc=0x4000))  # and it can be set up again
    assert mmio.core.queues[0].desc_table == 0x4000


# --- notifications and the interrupt ----------------------------------------------------


def test_a_request_notified_through_the_register_raises_the_used_buffer_bit(
    mmio: VirtioMmio, memory: GuestMemory, line: Line
) -> None:
    drivers = start(mmio, memory)
    head = drivers[1].add([b"ping"], [4])
    assert read(mmio, Reg.INTERRUPT_STATUS) == 0 and not line.level
    write(mmio, Reg.QUEUE_NOTIFY, 1)
    assert drivers[1].get_used() == [(head, 4)]
    assert read(mmio, Reg.INTERRUPT_STATUS) == INTERRUPT_USED_BUFFER
    assert line.level
    write(mmio, Reg.INTERRUPT_ACK, INTERRUPT_USED_BUFFER)
    assert read(mmio, Reg.INTERRUPT_STATUS) == 0
    assert not line.level


def test_a_notification_for_no_queue_is_ignored(mmio: VirtioMmio, memory: GuestMemory) -> None:
    start(mmio, memory)
    write(mmio, Reg.QUEUE_NOTIFY, 2)
    write(mmio, Reg.QUEUE_NOTIFY, 0xFFFF_FFFF)
    assert isinstance(mmio.device, Echo) and mmio.device.notified == []
    assert read(mmio, Reg.STATUS) == ACK | DRIVER | FEATURES_OK | DRIVER_OK


def test_acknowledging_one_bit_keeps_the_line_up_for_the_other(
    mmio: VirtioMmio, memory: GuestMemory, line: Line
) -> None:
    start(mmio, memory)
    mmio.used_buffer(0)
    mmio.config_changed()
    assert read(mmio, Reg.INTERRUPT_STATUS) == INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE
    write(mmio, Reg.INTERRUPT_ACK, INTERRUPT_USED_BUFFER | 0xFFFF_FFF0)  # other bits: nothing
    assert read(mmio, Reg.INTERRUPT_STATUS) == INTERRUPT_CONFIG_CHANGE
    assert line.level
    write(mmio, Reg.INTERRUPT_ACK, INTERRUPT_CONFIG_CHANGE)
    assert not line.level


def test_a_queue_fault_after_driver_ok_is_a_configuration_interrupt(
    mmio: VirtioMmio, memory: GuestMemory, line: Line
) -> None:
    drivers = start(mmio, memory)
    drivers[0].write_desc(0, 0xFFFF_0000, 16, 0, 0)  # a buffer outside RAM
    drivers[0].publish(0)
    write(mmio, Reg.QUEUE_NOTIFY, 0)
    assert read(mmio, Reg.STATUS) & NEEDS_RESET
    assert read(mmio, Reg.INTERRUPT_STATUS) & INTERRUPT_CONFIG_CHANGE
    assert line.level


def test_status_0_resets_the_device_and_its_interrupt(
    mmio: VirtioMmio, memory: GuestMemory, line: Line
) -> None:
    start(mmio, memory)
    mmio.used_buffer(0)
    write(mmio, Reg.STATUS, 0)
    assert read(mmio, Reg.STATUS) == 0
    assert read(mmio, Reg.INTERRUPT_STATUS) == 0 and not line.level
    write(mmio, Reg.QUEUE_SEL, 0)
    assert read(mmio, Reg.QUEUE_READY) == 0
    start(mmio, memory)  # the driver starts over
    assert mmio.core.active


def test_status_bits_above_the_eight_are_not_a_reset(mmio: VirtioMmio, memory: GuestMemory) -> None:
    start(mmio, memory)
    write(mmio, Reg.STATUS, 0x100)
    assert read(mmio, Reg.STATUS) == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    assert mmio.core.active


class WatchedLine(Line):
    """Checks, at every level change, that the level is what InterruptStatus says."""

    def __init__(self) -> None:
        super().__init__()
        self.mmio: VirtioMmio | None = None
        self.mismatches = 0

    def set_level(self, high: bool) -> None:
        assert self.mmio is not None
        if high != bool(self.mmio.interrupt_status):
            self.mismatches += 1
        super().set_level(high)


def test_interrupts_from_many_threads_keep_the_line_at_the_status(memory: GuestMemory) -> None:
    """Devices raise from the I/O thread while vCPUs acknowledge: the line changes
    with InterruptStatus, never after another thread changed it again."""
    line = WatchedLine()
    mmio = line.mmio = VirtioMmio(Echo(), memory, line)
    stop = threading.Event()

    def raise_forever() -> None:
        while not stop.is_set():
            mmio.used_buffer(0)
            mmio.config_changed()

    raisers = [threading.Thread(target=raise_forever) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    for thread in raisers:
        thread.start()
    try:
        for _ in range(3000):
            write(mmio, Reg.INTERRUPT_ACK, INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE)
    finally:
        stop.set()
        for thread in raisers:
            thread.join()
        sys.setswitchinterval(interval)
    assert line.mismatches == 0
    assert line.level == bool(read(mmio, Reg.INTERRUPT_STATUS))
    write(mmio, Reg.INTERRUPT_ACK, INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE)
    assert not line.level


# --- hostile accesses ---------------------------------------------------------------------

ACCESS = st.tuples(
    st.booleans(),  # write?
    st.sampled_from([1, 2, 4, 8]),
    st.integers(0, WINDOW_SIZE - 1),
    st.one_of(st.integers(0, 0xFFFF_FFFF_FFFF_FFFF), st.sampled_from([0, 1, 2, 3, 4, 8, 0x80, 0xFFFF_FFFF])),
)


REGISTER_WRITE = st.tuples(
    st.just(True), st.just(4), st.sampled_from([int(reg) for reg in Reg]), st.integers(0, 0xFFFF_FFFF)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(accesses=st.lists(st.one_of(ACCESS, REGISTER_WRITE), max_size=80))
def test_arbitrary_accesses_never_raise(
    memory: GuestMemory, accesses: list[tuple[bool, int, int, int]]
) -> None:
    """Any access at any offset and width with any value (half of them 32-bit writes
    to real registers, which reach deeper states): a value of the access's width, or
    nothing; never an exception, and the line always follows InterruptStatus."""
    line = Line()
    mmio = VirtioMmio(Echo(), memory, line)
    for is_write, size, offset, value in accesses:
        offset = min(offset, WINDOW_SIZE - size)  # the bus only passes accesses inside the window
        if is_write:
            mmio.write(offset, size, value & ((1 << (8 * size)) - 1))
        else:
            assert 0 <= mmio.read(offset, size) < 1 << (8 * size)
        status = mmio.interrupt_status
        assert status & ~(INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE) == 0
        assert line.level == bool(status) or line.changes == 0


# --- QueueNotify through KVM_IOEVENTFD ------------------------------------------------------

WINDOW = MMIO_ADDRESS  # real-mode reachable (segment 0xF000), above the guest's 64 KiB of RAM
# mov ax, 0xf000; mov ds, ax; mov dword [0x50], 1; mov dword [0x50], 7; hlt
NOTIFY_WRITES = bytes.fromhex("b800f0 8ed8 66c7065000 01000000 66c7065000 07000000 f4")


@pytest.fixture
def io() -> Iterator[IoThread]:
    errors: list[BaseException] = []
    thread = IoThread(lambda source, error: errors.append(error), name="test-io")
    yield thread
    thread.stop()
    assert errors == []


def run_to_mmio_exit(vcpu: Vcpu, mmio: VirtioMmio) -> list[tuple[int, int]]:
    """Run until the guest halts, handing its MMIO writes to the window as the MMIO
    bus would; the (offset, value) of each write that came to user space."""
    exits = []
    while (reason := vcpu.run()) == ExitReason.MMIO:
        exit_ = vcpu.run_state.mmio
        assert exit_.is_write and exit_.len == 4
        offset, value = exit_.phys_addr - WINDOW, int.from_bytes(bytes(exit_.data[:4]), "little")
        exits.append((offset, value))
        mmio.write(offset, 4, value)
    assert reason == ExitReason.HLT
    return exits


def wait_used(driver: Driver) -> list[tuple[int, int]]:
    deadline = time.monotonic() + 10
    while not driver.used_idx() and time.monotonic() < deadline:
        time.sleep(0.01)
    return driver.get_used()


@pytest.mark.kvm
@pytest.mark.parametrize("in_kernel", [True, False], ids=["ioeventfd", "exit-handler"])
def test_queue_notify_reaches_the_device_on_the_io_thread(
    mmio: VirtioMmio, memory: GuestMemory, io: IoThread, in_kernel: bool
) -> None:
    """The guest writes 1 (queue 1) then 7 (no queue) to QueueNotify. With an
    ioeventfd KVM takes the 1 and only the 7 exits; without, both exit and the
    register rings queue 1's doorbell. Either way the device runs on the I/O thread."""
    drivers = start(mmio, memory)
    head = drivers[1].add([b"pong"], [4])
    with real_mode_guest(NOTIFY_WRITES) as (vm, vcpu):
        assert vm.check_extension(Cap.IOEVENTFD)
        notifiers = MmioNotifiers(vm, io, mmio, WINDOW, in_kernel=in_kernel)
        assert [doorbell.in_kernel for doorbell in notifiers.doorbells] == [in_kernel, in_kernel]
        io.start()
        try:
            exits = run_to_mmio_exit(vcpu, mmio)
            notify = int(Reg.QUEUE_NOTIFY)
            assert exits == ([(notify, 7)] if in_kernel else [(notify, 1), (notify, 7)])
            assert isinstance(mmio.device, Echo)
            assert mmio.device.done.wait(10)
            assert wait_used(drivers[1]) == [(head, 4)]
            assert mmio.device.notified == [(1, "test-io")]
            assert mmio.interrupt_status == INTERRUPT_USED_BUFFER
        finally:
            notifiers.close()
        assert all(doorbell.eventfd.closed for doorbell in notifiers.doorbells)


def test_without_doorbells_the_register_write_notifies_on_its_thread(
    mmio: VirtioMmio, memory: GuestMemory
) -> None:
    drivers = start(mmio, memory)
    head = drivers[0].add([b"x"], [1])
    write(mmio, Reg.QUEUE_NOTIFY, 0)
    assert drivers[0].get_used() == [(head, 1)]
    assert isinstance(mmio.device, Echo)
    assert mmio.device.notified == [(0, threading.current_thread().name)]


def test_queue_ready_enables_the_queue_selected_when_the_write_began(
    mmio: VirtioMmio, memory: GuestMemory
) -> None:
    """Another vCPU selects a queue past the last right after QueueReady's write read
    QueueSel: the queue selected before is the one enabled (the core used to read
    queue_select again and enable none)."""
    from virtio.test_pci import RacingSelect

    assert negotiate(mmio) & FEATURES_OK
    write(mmio, Reg.QUEUE_SEL, 0)
    write(mmio, Reg.QUEUE_NUM, QUEUE_SIZE)
    write(mmio, Reg.QUEUE_DESC_LOW, 0x1000)
    core = mmio.core
    vars(core)["_select"] = vars(core).pop("queue_select")
    core.__class__ = RacingSelect
    assert isinstance(core, RacingSelect)
    core.then = 0xFFFF
    write(mmio, Reg.QUEUE_READY, 1)
    assert core.reads == 1
    assert core.queues[0].ready
