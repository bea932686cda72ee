"""Snapshots: the neutral home of saved state (field checks, the tag registry, the
codec) and the snapshot file format. Devices register their states here; nothing in
this package imports a device."""
