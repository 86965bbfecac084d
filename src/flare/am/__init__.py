"""Additive manufacturing (LPBF) data: mesh-derived node features (SPEC §5)."""
