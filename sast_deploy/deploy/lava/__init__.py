"""Lava process models of our own, kept in their own folder as Lava lays processes out (Lava's compiler imports every module in a process's folder)."""
