"""Class activation maps: the HDF5 store every later stage reads, and their evaluation."""
