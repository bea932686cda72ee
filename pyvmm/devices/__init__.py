"""Legacy platform devices: pure-Python models a guest reaches through the port bus."""

from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.fw_cfg import FwCfg
from pyvmm.devices.ports import PortSink
from pyvmm.devices.power import PowerControl
from pyvmm.devices.serial import Serial16550

__all__ = ["DebugExit", "FwCfg", "PortSink", "PowerControl", "Serial16550"]
