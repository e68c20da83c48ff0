"""sast-deploy: Sharpness-Aware Surrogate Training for spiking networks, deployed to Loihi 2 through Lava."""

__version__ = "0.1.0"
