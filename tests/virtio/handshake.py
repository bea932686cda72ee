"""A driver's side of the device initialization (virtio 1.2 §3.1.1) against a
`VirtioCore`, for device tests: negotiate features, program and enable queues."""

from __future__ import annotations

from virtio.driver import Driver

from pyvmm.virtio.core import VirtioCore

ACK, DRIVER, FEATURES_OK, DRIVER_OK = 1, 2, 8, 4


def negotiate(core: VirtioCore, features: int) -> None:
    core.write_status(ACK)
    core.write_status(ACK | DRIVER)
    for select in (0, 1):
        core.driver_feature_select = select
        core.write_driver_features(features >> (32 * select))
    core.write_status(ACK | DRIVER | FEATURES_OK)


def program_queue(core: VirtioCore, driver: Driver, index: int = 0) -> None:
    core.queue_select = index
    queue = core.selected_queue()
    assert queue is not None
    queue.size = driver.size
    queue.desc_table, queue.avail_ring, queue.used_ring = driver.desc, driver.avail, driver.used
    core.enable_queue(index)


def start(core: VirtioCore, features: int, drivers: list[Driver]) -> None:
    """The whole §3.1.1 sequence: features, then queue i on `drivers[i]`, then DRIVER_OK."""
    negotiate(core, features)
    for index, driver in enumerate(drivers):
        program_queue(core, driver, index)
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
