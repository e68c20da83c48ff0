"""sast-deploy: Sharpness-Aware Surrogate Training for spiking networks, deployed to Loihi 2 through Lava."""

# Lava's runtime calls multiprocessing.set_start_method('fork') (unforced) when first
# imported, which fails once anything else fixed the start method: tqdm does, by creating
# its multiprocessing lock. Importing that module first (0.4 s) keeps every later Lava
# import working, whatever ran in between.
import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401,E402

__version__ = "0.1.0"
