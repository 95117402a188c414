"""Models: CLIP, the T2MedI latent diffusion pipeline and the subgroup classifier."""
