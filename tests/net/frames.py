"""Ethernet, ARP, IPv4 and UDP frames for the TAP and virtio-net tests, built and
taken apart by hand so that a test states every byte it expects."""

from __future__ import annotations

import socket
import struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_ALL = 0x0003
BROADCAST = b"\xff" * 6


def mac_text(mac: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in mac)


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0x4000, 64, protocol, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def udp_pseudo_sum(src: str, dst: str, length: int) -> int:
    """The pseudo-header's part of the UDP checksum, not complemented (what a driver
    puts in the checksum field of a packet it hands over with NEEDS_CSUM)."""
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    return ~checksum(pseudo) & 0xFFFF


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, *, partial: bool = False) -> bytes:
    """A UDP datagram with its checksum, or with only the pseudo-header sum in the
    checksum field when `partial` (the checksum is left to whoever offloads it)."""
    length = 8 + len(payload)
    if partial:
        return struct.pack("!HHHH", sport, dport, length, udp_pseudo_sum(src, dst, length)) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    return struct.pack("!HHHH", sport, dport, length, checksum(pseudo + header + payload) or 0xFFFF) + payload


def udp_frame(
    dst_mac: bytes, src_mac: bytes, src: str, dst: str, sport: int, dport: int, payload: bytes,
    *, partial: bool = False,
) -> bytes:  # fmt: skip
    datagram = udp(src, dst, sport, dport, payload, partial=partial)
    return ethernet(dst_mac, src_mac, ETH_P_IP, ipv4(src, dst, 17, datagram))


def arp(op: int, sender_mac: bytes, sender_ip: str, target_mac: bytes, target_ip: str) -> bytes:
    return struct.pack(
        "!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op, sender_mac, socket.inet_aton(sender_ip),
        target_mac, socket.inet_aton(target_ip),
    )  # fmt: skip


def parse_arp(frame: bytes) -> tuple[int, bytes, str, str] | None:
    """(op, sender MAC, sender IP, target IP) of an ARP frame, else None."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    op, sender_mac, sender_ip, _target_mac, target_ip = struct.unpack("!6xH6s4s6s4s", frame[14:42])
    return op, sender_mac, socket.inet_ntoa(sender_ip), socket.inet_ntoa(target_ip)
