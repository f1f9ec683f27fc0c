"""cosmonet: MPI particle-mesh simulations and 3D deep learning for cosmology.

Units throughout: comoving Mpc/h for lengths, h/Mpc for wavenumbers, (Mpc/h)^3 for
power spectra, scale factor ``a`` for time (z = 1/a - 1).
"""

__version__ = "0.1.0"
