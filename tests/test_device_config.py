"""The device options as the CLI spells them (QEMU style) and as the API takes them."""

from __future__ import annotations

import pytest

from pyvmm.device_config import DiskConfig, NetConfig
from pyvmm.errors import ConfigError


def test_disk_options() -> None:
    assert DiskConfig.parse("root.ext4") == DiskConfig("root.ext4")
    assert DiskConfig.parse("data.img,readonly=on,serial=data-1") == DiskConfig("data.img", True, "data-1")
    assert DiskConfig.parse("x,readonly=off") == DiskConfig("x")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "non-empty"),
        ("a.img,cache=none", "unknown option 'cache'"),
        ("a.img,readonly=maybe", "on or off"),
        ("a.img,readonly", "key=value"),
        ("a.img,readonly=on,readonly=off", "twice"),
        ("a.img,serial=" + "x" * 21, "at most 20 bytes"),
    ],
)
def test_bad_disk_options(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        DiskConfig.parse(text)


def test_net_options() -> None:
    assert NetConfig.parse("tap") == NetConfig(None)
    assert NetConfig.parse("tap=tap0,mac=52:54:00:12:34:56") == NetConfig("tap0", "52:54:00:12:34:56")
    assert NetConfig().mac_bytes(1) == bytes.fromhex("525400123457")
    assert NetConfig(mac="02:00:00:00:00:01").mac_bytes(0) == bytes.fromhex("020000000001")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("user", "only TAP"),
        ("tap=tap0,mac=52:54:00:12:34", "not a MAC"),
        ("tap=tap0,mac=01:00:5e:00:00:01", "multicast"),
        ("tap=a/b", "not a network interface name"),
        ("tap=" + "t" * 16, "not a network interface name"),
        ("tap=tap0,vhost=on", "unknown option"),
    ],
)
def test_bad_net_options(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        NetConfig.parse(text)
