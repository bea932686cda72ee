"""The gdb remote serial protocol stub: a debugger drives the guest's vCPUs."""
