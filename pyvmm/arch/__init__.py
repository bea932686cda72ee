"""Architecture support. Only x86-64 today."""
