"""Health: rules per kind and the gate that waits on them."""
