"""MONAI-compatible networks of the Res-SEblock GAN (Deng et al.): generator, discriminator, ablations."""
