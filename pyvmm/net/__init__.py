"""The host side of guest networking: TAP devices (tap.py) and the TUN/TAP driver's
ioctl interface (if_tun.py). The guest-facing virtio-net device is pyvmm/virtio/net.py."""
