"""Informers: one watch-backed cache per kind, shared by drift, the gate and the plan."""
