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
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "mpi4py>=3.1",
        "mpi4py-fft>=2.0.5",
        "pyccl>=3.0",
        "h5py>=3.8",
        "numba>=0.58",
        "PyYAML>=6.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "torch>=2.1",
    ],
    extras_require={"test": ["pytest>=7.0", "hypothesis>=6.0", "pynbody>=2.0"]},
    entry_points={"console_scripts": ["cosmonet=cosmonet.cli:main"]},
)
