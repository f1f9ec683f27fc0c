"""cosmonet: an HPC suite for cosmology with machine learning."""
from setuptools import find_packages, setup

setup(
    name="cosmonet",
    version="0.1.0",
    description="MPI particle-mesh simulations (ZA, 2LPT, FastPM) and 3D deep learning for cosmology",
    python_requires=">=3.10",
    packages=find_packages(include=["cosmonet", "cosmonet.*"]),
    # the shipped networks (cosmonet/pretrained/NAME/: weights.pt, card.json, MODEL_CARD.md)
    package_data={"cosmonet.pretrained": ["*/weights.pt", "*/card.json", "*/MODEL_CARD.md"]},
    # The core: training, evaluation, emulation, the probes, power and the torch engine
    # (one-rank meshes use numpy's FFT and numpy CIC kernels without the [mpi] extra).
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pyccl>=3.0",
        "h5py>=3.8",
        "PyYAML>=6.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "torch>=2.1",
    ],
    extras_require={
        # the MPI engine on several ranks, FFTW, numba-compiled kernels, campaigns (simulate)
        "mpi": ["mpi4py>=3.1", "mpi4py-fft>=2.0.5", "numba>=0.58"],
        # built locally against this torch: make horovod (docs/horovod.md), or a wheelhouse
        "horovod": ["horovod==0.28.1"],
        # pynbody: the independent reader of `cosmonet export` snapshots (tests/test_export.py)
        "test": ["pytest>=7.0", "hypothesis>=6.0", "pynbody>=2.0"],
        # peers: JaxPM, the PM code benchmarks/bench_peers.py compares with (CPU jax is enough)
        "peers": ["jax>=0.4.30", "jaxpm>=0.1.6"],
    },
    entry_points={"console_scripts": ["cosmonet=cosmonet.cli:main"]},
)
