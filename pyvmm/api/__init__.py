"""Control front ends over one `Machine`: the QEMU Machine Protocol server (QMP)."""
