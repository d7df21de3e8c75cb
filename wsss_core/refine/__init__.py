"""CAM refinement by learnt pixel affinities: PSA's AffinityNet and random walk (Ahn & Kwak, CVPR 2018)."""
