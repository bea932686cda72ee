"""Control front ends over one `Machine`: the QEMU Machine Protocol server (QMP).

`qmp.QmpServer(controller, address)` serves QMP (docs/interop/qmp-spec.rst) on the
address `address.parse_address` reads from `--qmp`, over a `controller.MachineController`
(what QMP needs from a machine, implemented by `pyvmm.machine.Machine`).
"""
