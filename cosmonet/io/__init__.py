"""HDF5 files: self-describing simulation outputs, written atomically."""
