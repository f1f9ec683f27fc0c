"""Gadget-format HDF5 snapshots of cosmonet particles (``cosmonet export``).

One file (``NumFilesPerSnapshot`` = 1) in the layout that Gadget-2/3/4, Arepo and the
readers built for them (pynbody, yt, h5py scripts) load. All particles are dark matter,
``PartType1``, of one mass given in the header's ``MassTable``:

- ``PartType1/Coordinates`` (float32, (N, 3)): comoving positions q + displacement,
  wrapped into [0, BoxSize), in kpc/h (default) or Mpc/h (``length_unit="Mpc"``);
- ``PartType1/Velocities`` (float32, (N, 3)): Gadget's velocity variable, the peculiar
  velocity divided by sqrt(a), in km/s (u = v_pec / sqrt(a) = sqrt(a) dx_comoving/dt);
  left out when the source has no velocities (``emulated`` and every field of an
  ``emulate`` output: the network predicts displacements only);
- ``PartType1/ParticleIDs`` (uint64, (N,)): 1 + (i nc + j) nc + k of the particle's
  Lagrangian grid point q = (i, j, k) L / nc.

Units are stated twice, as Gadget-4 does: ``Parameters`` attributes ``UnitLength_in_cm``,
``UnitMass_in_g`` (1e10 Msun/h) and ``UnitVelocity_in_cm_per_s`` (1e5, km/s), and on each
dataset ``a_scaling``/``h_scaling`` (Coordinates a^1 h^-1, Velocities a^1/2) with
``to_cgs``. The cosmology is flat (OmegaLambda = 1 - Omega0), as cosmonet's.
"""
import math

import h5py
import numpy as np

from ..errors import InputError
from .atomic import atomic_path
from .simfile import describe_sim_file, open_sim_file

FIELDS = ("za", "lpt2", "fastpm", "emulated")
KPC_CM = 3.085678e21
LENGTH_UNITS_CM = {"kpc": KPC_CM, "Mpc": 1e3 * KPC_CM}      # comoving, per h
KPC_PER = {"kpc": 1.0, "Mpc": 1e3}
MASS_UNIT_G = 1.989e43                                      # 1e10 Msun/h
VELOCITY_UNIT_CM_S = 1e5                                    # km/s
# critical density 3 H0^2 / (8 pi G) in (1e10 Msun/h) / (Mpc/h)^3 (2.775e11 h^2 Msun / Mpc^3)
RHO_CRIT = 27.7536627
CHUNK_PARTICLES = 1 << 22                                   # particles read and written at once


def particle_mass(omega_m, box, nc):
    """Mass of one of nc^3 particles in a box of side ``box`` Mpc/h of mean density
    Omega_m rho_crit, in 1e10 Msun/h (Gadget's mass unit)."""
    return RHO_CRIT * omega_m * box ** 3 / nc ** 3


def lattice_ids(nc, lo, hi):
    """ParticleIDs of the Lagrangian planes i in [lo, hi): 1 + (i nc + j) nc + k, uint64."""
    return np.arange(lo * nc * nc, hi * nc * nc, dtype=np.uint64) + np.uint64(1)


def _source(path, field, index):
    """(attrs, row, disp dataset name, vel dataset name or None) of ``field`` in ``path``;
    InputError (one line) for a field, index or file that cannot be exported."""
    if field not in FIELDS:
        raise InputError(f"--field {field!r} is not one of {', '.join(FIELDS)}")
    attrs, row = describe_sim_file(path, index)
    nc, box = int(attrs["nc"]), float(attrs["box_size"])
    with open_sim_file(path) as f:
        disp = f"{field}/disp"
        if disp not in f:
            have = sorted(k for k in f.keys() if f"{k}/disp" in f)
            raise InputError(f"{path} has no field '{field}' (has: {', '.join(have) or 'none'})")
        want = (3, nc, nc, nc) if row is None else (f[disp].shape[0], 3, nc, nc, nc)
        vel = f"{field}/vel" if f"{field}/vel" in f else None
        for name in (disp, vel):
            if name is not None and f[name].shape != want:
                raise InputError(f"{path}: {name} has shape {f[name].shape}, expected {want}")
            if name is not None and not np.issubdtype(f[name].dtype, np.floating):
                raise InputError(f"{path}: {name} holds {f[name].dtype} values, not floating point")
    for key in ("Omega_m", "h", "a_final"):
        v = attrs.get(key)
        if not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)) or float(v) <= 0:
            raise InputError(f"{path} has no usable '{key}' attribute (got {v!r}); the Gadget header needs it")
    if not (math.isfinite(box) and box > 0 and nc >= 1):
        raise InputError(f"{path}: box_size {box!r} and nc {nc!r} do not describe a box")
    return attrs, row, disp, vel


def header_attrs(attrs, n_total, length_unit="kpc"):
    """The ``Header`` attributes of a one-file snapshot of ``n_total`` particles of type 1."""
    nc, box = int(attrs["nc"]), float(attrs["box_size"])
    a = float(attrs["a_final"])
    om = float(attrs["Omega_m"])
    counts = np.zeros(6, dtype=np.uint64)
    counts[1] = n_total
    mass = np.zeros(6)
    mass[1] = particle_mass(om, box, nc)
    return {
        "BoxSize": box * 1e3 / KPC_PER[length_unit], "Time": a, "Redshift": 1.0 / a - 1.0,
        "Omega0": om, "OmegaLambda": 1.0 - om, "OmegaBaryon": float(attrs.get("Omega_b", 0.0)),
        "HubbleParam": float(attrs["h"]), "MassTable": mass,
        "NumPart_ThisFile": (counts & 0xFFFFFFFF).astype(np.uint32),
        "NumPart_Total": (counts & 0xFFFFFFFF).astype(np.uint32),
        "NumPart_Total_HighWord": (counts >> np.uint64(32)).astype(np.uint32),
        "NumFilesPerSnapshot": np.int32(1),
        "Flag_Sfr": np.int32(0), "Flag_Cooling": np.int32(0), "Flag_Feedback": np.int32(0),
        "Flag_StellarAge": np.int32(0), "Flag_Metals": np.int32(0), "Flag_Entropy_ICs": np.int32(0),
        "Flag_DoublePrecision": np.int32(0), "Flag_IC_Info": np.int32(0),
    }


def _parameters(header, length_unit):
    return {"UnitLength_in_cm": LENGTH_UNITS_CM[length_unit], "UnitMass_in_g": MASS_UNIT_G,
            "UnitVelocity_in_cm_per_s": VELOCITY_UNIT_CM_S, "ComovingIntegrationOn": np.int32(1),
            **{k: header[k] for k in ("BoxSize", "Omega0", "OmegaLambda", "OmegaBaryon", "HubbleParam")}}


def export_gadget(path, out, field="fastpm", index=None, length_unit="kpc"):
    """Write ``field`` of the simulation file ``path`` (of simulation ``index`` of a campaign
    shard) to ``out`` as a Gadget HDF5 snapshot (see the module docstring), atomically.

    Returns a summary dict (particles, units, whether velocities were written). Raises
    InputError (one line) for a missing field, a bad index or non-finite values; ``out``
    is then not created.
    """
    if length_unit not in LENGTH_UNITS_CM:
        raise InputError(f"--length-unit {length_unit!r} is not one of {', '.join(LENGTH_UNITS_CM)}")
    attrs, row, disp_name, vel_name = _source(path, field, index)
    nc, box = int(attrs["nc"]), float(attrs["box_size"])
    n = nc ** 3
    header = header_attrs(attrs, n, length_unit)
    to_unit = 1e3 / KPC_PER[length_unit]                     # Mpc/h -> kpc/h or Mpc/h
    box_out = np.float32(header["BoxSize"])
    vel_scale = 1.0 / math.sqrt(float(attrs["a_final"]))
    planes = max(1, CHUNK_PARTICLES // (nc * nc))
    g = np.arange(nc) * (box / nc)
    with open_sim_file(path) as src, atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        hdr = f.create_group("Header")
        for k, v in header.items():
            hdr.attrs[k] = v
        par = f.create_group("Parameters")
        for k, v in _parameters(header, length_unit).items():
            par.attrs[k] = v
        grp = f.create_group("PartType1")
        pos_ds = grp.create_dataset("Coordinates", (n, 3), dtype=np.float32)
        _scaling(pos_ds, 1.0, -1.0, LENGTH_UNITS_CM[length_unit], length=1.0)
        vel_ds = None
        if vel_name is not None:
            vel_ds = grp.create_dataset("Velocities", (n, 3), dtype=np.float32)
            _scaling(vel_ds, 0.5, 0.0, VELOCITY_UNIT_CM_S, velocity=1.0)
        ids_ds = grp.create_dataset("ParticleIDs", (n,), dtype=np.uint64)
        for lo in range(0, nc, planes):
            hi = min(nc, lo + planes)
            sel = np.s_[:, lo:hi] if row is None else np.s_[row, :, lo:hi]
            d = src[disp_name][sel].astype(np.float64)
            _finite(d, path, disp_name)
            q = np.stack(np.meshgrid(g[lo:hi], g, g, indexing="ij"))
            x = (np.mod(q + d, box) * to_unit).reshape(3, -1).T.astype(np.float32)
            x[x >= box_out] = 0.0             # float32 rounding of a coordinate just below the box
            a, b = lo * nc * nc, hi * nc * nc
            pos_ds[a:b] = x
            ids_ds[a:b] = lattice_ids(nc, lo, hi)
            if vel_ds is not None:
                v = src[vel_name][sel].astype(np.float64)
                _finite(v, path, vel_name)
                vel_ds[a:b] = (v * vel_scale).reshape(3, -1).T.astype(np.float32)
    return {"out": out, "field": field, "index": index, "particles": n, "velocities": vel_ds is not None,
            "length_unit": f"{length_unit}/h", "box_size": float(header["BoxSize"]),
            "particle_mass_1e10_msun_h": float(header["MassTable"][1]), "redshift": header["Redshift"]}


def _scaling(ds, a_exp, h_exp, to_cgs, length=0.0, velocity=0.0):
    """Gadget-4's per-dataset unit attributes: value * a^a_exp h^h_exp * to_cgs is in cgs."""
    ds.attrs.update({"a_scaling": a_exp, "h_scaling": h_exp, "length_scaling": length, "mass_scaling": 0.0,
                     "velocity_scaling": velocity, "to_cgs": to_cgs})


def _finite(arr, path, name):
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise InputError(f"{path}: {name} has {bad} non-finite values (NaN or infinity); export refuses it")
