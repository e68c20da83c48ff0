"""Stages 5-8, deployment: Loihi 2 fixed point, netx HDF5 and other export targets, the bit-exact emulator, Lava's simulator, and their comparison."""
