"""Legacy platform devices: pure-Python models a guest reaches through the port bus."""

from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.fw_cfg import FwCfg
from pyvmm.devices.i8042 import I8042
from pyvmm.devices.ports import PortSink
from pyvmm.devices.power import PowerControl
from pyvmm.devices.rtc import CmosRtc
from pyvmm.devices.serial import Serial16550

__all__ = ["I8042", "CmosRtc", "DebugExit", "FwCfg", "PortSink", "PowerControl", "Serial16550"]
