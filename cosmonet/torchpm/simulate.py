"""``run_batch``: ZA, 2LPT and FastPM for a batch of boxes on one torch device.

The outputs are those of :func:`cosmonet.sim.simulation.run_simulation`, per box, stacked:
``za/disp``, ``za/vel``, ``lpt2/disp``, ``lpt2/vel``, ``fastpm/disp``, ``fastpm/vel``,
numpy float32 of shape (B, 3, nc, nc, nc) indexed by the particle's Lagrangian grid point
(displacements in Mpc/h wrapped to the minimum image, velocities a dx/dt in km/s), and
optionally ``density`` (B, 1, M, M, M), the CIC density contrast of the FastPM particles on
an M^3 mesh as :func:`cosmonet.sim.simulation.density_contrast`.

LPT runs in float64 by default (``lpt_dtype``; it costs a few per cent of a run), the
particle mesh in float32.
"""
import numpy as np
import torch

from ..cosmology import growth_for, parse_cosmology
from ..errors import InputError
from ..sim.simulation import VELOCITY_UNIT_KMS
from . import batch_cic as cic
from .gravity import BatchGravity
from .batch_linear import linear_density_k, linear_field_k
from .batch_lpt import lpt2_displacement, za_displacement
from .batch_mesh import BatchMesh
from .nbody import BatchState, run_fastpm
from .noise import white_noise_batch
from .device_timing import device_timer

FIELDS = ("za/disp", "za/vel", "lpt2/disp", "lpt2/vel", "fastpm/disp", "fastpm/vel")


def resolve_device(device):
    """A torch.device, or an InputError naming the problem (e.g. CUDA not available);
    a torch.device passes through (:func:`cosmonet.resources.check_device`)."""
    from ..resources import check_device
    return device if isinstance(device, torch.device) else check_device(device)


def _cosmologies(config, cosmologies, B):
    if cosmologies is None:
        return [config.cosmology] * B
    cosmologies = [parse_cosmology(c) for c in cosmologies]
    if len(cosmologies) != B:
        raise InputError(f"got {len(cosmologies)} cosmologies for {B} boxes")
    return cosmologies


def _minimum_image(disp, box):
    return torch.remainder(disp + 0.5 * box, box) - 0.5 * box


def run_batch(config, seeds=None, *, linear_fields=None, cosmologies=None, device="cpu", fields=None,
              density_nmesh=None, lpt_dtype=torch.float64, gradient="fd4", noise_workers=1, timers=None,
              as_numpy=True):
    """Run ZA, 2LPT and FastPM for a batch of boxes; returns {field: (B, ...) float32 numpy}
    (float32 tensors on the device with ``as_numpy=False``).

    ``config``: a :class:`~cosmonet.sim.simulation.SimConfig` (nc, box, steps, boost,
    a_start, a_final, cosmology; its ``seed`` is not used). Exactly one of ``seeds`` (B
    white-noise seeds, each box the MPI engine's box of that seed) and ``linear_fields``
    ((B, nc, nc, nc) real-space delta_lin at a = 1). ``cosmologies``: one per box instead of
    ``config.cosmology``. ``fields``: names of :data:`FIELDS` to return (default all);
    ``density_nmesh``: also return ``density`` on that mesh. ``noise_workers``: processes
    drawing the white noise (:mod:`cosmonet.torchpm.noise`). ``timers``: a
    :class:`cosmonet.timing.Timers` that collects lpt / fft / paint / readout / fastpm time
    (synchronising the device around each timed block; None times nothing).
    """
    dev = resolve_device(device)

    def _host(t):
        t = t.to(dtype=torch.float32)
        return t.cpu().numpy() if as_numpy else t

    if (seeds is None) == (linear_fields is None):
        raise InputError("give exactly one of seeds and linear_fields")
    B = len(seeds) if seeds is not None else len(linear_fields)
    if B < 1:
        raise InputError("a batch needs at least one box")
    wanted = FIELDS if fields is None else tuple(fields)
    unknown = [f for f in wanted if f not in FIELDS]
    if unknown:
        raise InputError(f"unknown fields {unknown} (choose from {', '.join(FIELDS)})")
    cosmos = _cosmologies(config, cosmologies, B)
    nc, box = config.nc, float(config.box)
    a0, af = config.a_start, config.a_final
    out = {}
    with device_timer(timers, "lpt", dev):
        mesh = BatchMesh(nc, box, dev, lpt_dtype, timers)
        if seeds is not None:
            seeds = [int(s) for s in seeds]
            if any(not 0 <= s < 2 ** 63 for s in seeds):
                raise InputError("seeds must be non-negative integers < 2^63")
            with device_timer(timers, "noise", "cpu"):
                noise = white_noise_batch(nc, seeds, noise_workers)
            delta_k = linear_density_k(mesh, noise, cosmos)
        else:
            delta_k = linear_field_k(mesh, linear_fields)
        psi1 = za_displacement(mesh, delta_k).reshape(B, 3, -1)
        psi2 = lpt2_displacement(mesh, delta_k).reshape(B, 3, -1)
        del delta_k

        def col(scalar):
            """(B, 1, 1) tensor of scalar(cosmology, growth), evaluated once per distinct cosmology."""
            per = {c: scalar(c, growth_for(c)) for c in dict.fromkeys(cosmos)}
            return torch.as_tensor(np.array([per[c] for c in cosmos]).reshape(B, 1, 1), device=dev).to(lpt_dtype)

        def lpt(a, second, velocity):
            """x - q (or the momentum p, as sim.lpt) at a: D1 psi_1 + D2 psi_2."""
            if velocity:
                x = col(lambda c, g: g.D1(a) * g.f1(a) * a ** 2 * c.E(a)) * psi1
                return x + col(lambda c, g: g.D2(a) * g.f2(a) * a ** 2 * c.E(a)) * psi2 if second else x
            x = col(lambda c, g: g.D1(a)) * psi1
            return x + col(lambda c, g: g.D2(a)) * psi2 if second else x

        shape = (B, 3) + (nc,) * 3
        for name, second in (("za", False), ("lpt2", True)):
            if f"{name}/disp" in wanted:
                out[f"{name}/disp"] = _host(lpt(af, second, False)).reshape(shape)
            if f"{name}/vel" in wanted:
                out[f"{name}/vel"] = _host(VELOCITY_UNIT_KMS / af * lpt(af, second, True)).reshape(shape)
        state = BatchState(disp=lpt(a0, True, False).to(torch.float32),
                           mom=lpt(a0, True, True).to(torch.float32), a=a0)
        del psi1, psi2
    if not any(f.startswith("fastpm/") for f in wanted) and density_nmesh is None:
        return out
    with device_timer(timers, "fastpm", dev):
        force_mesh = BatchMesh(config.force_nmesh, box, dev, torch.float32, timers)
        gravity = BatchGravity(force_mesh, nc ** 3, gradient=gradient)
        q = force_mesh.lattice(nc)
        run_fastpm(state, gravity, q, cosmos, af, config.steps)
        disp = _minimum_image(state.disp, box)
    if "fastpm/disp" in wanted:
        out["fastpm/disp"] = _host(disp).reshape(shape)
    if "fastpm/vel" in wanted:
        out["fastpm/vel"] = _host(VELOCITY_UNIT_KMS / af * state.mom).reshape(shape)
    if density_nmesh is not None:
        out["density"] = _host(density_contrast(q, disp, box, int(density_nmesh))).reshape(
            (B, 1) + (int(density_nmesh),) * 3)
    return out


def density_contrast(q, disp, box, nmesh):
    """CIC density contrast (B, M, M, M) of particles at q + disp (q (3, n), disp (B, 3, n))
    on an M^3 mesh: count * M^3 / n - 1."""
    pos = torch.remainder(q + disp, box)
    pos = torch.where(pos >= box, torch.zeros_like(pos), pos)
    rho = cic.paint(cic.Stencil(pos, nmesh, box))
    return rho * (nmesh ** 3 / q.shape[1]) - 1.0
