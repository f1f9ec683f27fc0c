"""``run_batch``: ZA, 2LPT and FastPM for a batch of boxes on one torch device.

The outputs are those of :func:`cosmonet.sim.simulation.run_simulation`, per box, stacked:
``za/disp``, ``za/vel``, ``lpt2/disp``, ``lpt2/vel``, ``fastpm/disp``, ``fastpm/vel``,
numpy float32 of shape (B, 3, nc, nc, nc) indexed by the particle's Lagrangian grid point
(displacements in Mpc/h wrapped to the minimum image, velocities a dx/dt in km/s), and
optionally ``density`` (B, 1, M, M, M), the CIC density contrast of the FastPM particles on
an M^3 mesh as :func:`cosmonet.sim.simulation.density_contrast`.

LPT runs in float64 by default (``lpt_dtype``; it costs a few per cent of a run), the
particle mesh in float32.

Memory: the outputs are allocated once, float32, and every pass writes its boxes into
them (nothing is stacked or copied afterwards). The boxes go through LPT and the N-body
steps ``chunk`` at a time (default: one on the CPU, the whole batch on a GPU), so the
working memory -- the LPT meshes, the particle state, the CIC stencil and the force
meshes -- is that of one chunk, whatever the batch; the FastPM outputs on the device are
the particle state itself. See docs/benchmarks.md (issue 18, torch engine).
"""
import numpy as np
import torch

from ..cosmology import growth_for, parse_cosmology
from ..errors import InputError
from ..sim.simulation import VELOCITY_UNIT_KMS
from . import batch_cic as cic
from .gravity import BatchGravity, wrap_positions
from .batch_linear import check_linear_fields, linear_density_k, linear_field_k
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


def default_chunk(device, B):
    """Boxes per pass when ``run_batch`` is not told: the whole batch on a GPU (it needs
    the batch to fill the device); one on the CPU, the least memory at no cost in time
    (measured on D3M boxes, one thread: passes of one and of two take the same CPU time
    per box within 5%, a pass of eight 1.6 - 2x as much)."""
    return B if torch.device(device).type == "cuda" else 1


def _cosmologies(config, cosmologies, B):
    if cosmologies is None:
        return [config.cosmology] * B
    cosmologies = [parse_cosmology(c) for c in cosmologies]
    if len(cosmologies) != B:
        raise InputError(f"got {len(cosmologies)} cosmologies for {B} boxes")
    return cosmologies


def minimum_image_(disp, box):
    """Wrap displacements ``disp`` (Mpc/h) to the minimum image [-L/2, L/2), in place."""
    disp.add_(0.5 * box)
    torch.remainder(disp, box, out=disp)
    return disp.sub_(0.5 * box)


def run_batch(config, seeds=None, *, linear_fields=None, cosmologies=None, device="cpu", fields=None,
              density_nmesh=None, lpt_dtype=torch.float64, gradient="fd4", noise_workers=1, timers=None,
              as_numpy=True, chunk=None):
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
    (synchronising the device around each timed block; None times nothing). ``chunk``:
    boxes per pass through LPT and the N-body steps (default :func:`default_chunk`); the
    results depend on it only through the rounding of batched FFTs (on the CPU: none
    on D3M boxes, a 64^3 force mesh; up to 1e-5 Mpc/h with a 32^3 one, measured).
    """
    dev = resolve_device(device)
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
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if any(not 0 <= s < 2 ** 63 for s in seeds):
            raise InputError("seeds must be non-negative integers < 2^63")
    else:
        linear_fields = check_linear_fields(nc, linear_fields)
    chunk = default_chunk(dev, B) if chunk is None else int(chunk)
    if chunk < 1:
        raise InputError(f"chunk must be at least 1 box (got {chunk})")

    # every output once, float32, on the host (numpy) or the device
    home = torch.device("cpu") if as_numpy else dev
    out = {name: torch.empty((B, 3) + (nc,) * 3, dtype=torch.float32, device=home)
           for name in FIELDS if name in wanted}
    if density_nmesh is not None:
        out["density"] = torch.empty((B, 1) + (int(density_nmesh),) * 3, dtype=torch.float32, device=home)
    mesh = BatchMesh(nc, box, dev, lpt_dtype, timers)
    nbody = None
    if any(f.startswith("fastpm/") for f in wanted) or density_nmesh is not None:
        force_mesh = BatchMesh(config.force_nmesh, box, dev, torch.float32, timers)
        nbody = (BatchGravity(force_mesh, nc ** 3, gradient=gradient), force_mesh.lattice(nc))
    # with worker processes, the noise of the whole batch at once (B nc^3 float64), so
    # that the pool draws in parallel; else each pass draws its own
    noise = white_noise_batch(nc, seeds, noise_workers) if seeds is not None and noise_workers > 1 else None
    for lo in range(0, B, chunk):
        part = slice(lo, min(lo + chunk, B))
        if seeds is None:
            source = linear_fields[part]
        else:
            source = noise[part] if noise is not None else white_noise_batch(nc, seeds[part])
        _run_part(config, mesh, nbody, source, seeds is not None, cosmos[part],
                  {name: arr[part] for name, arr in out.items()}, home == dev, timers)
        del source
    return {name: arr.numpy() for name, arr in out.items()} if as_numpy else out


def _run_part(config, mesh, nbody, source, from_noise, cosmos, out, out_on_device, timers):
    """LPT and FastPM of the boxes of one pass: ``source`` their white noise
    (``from_noise``) or linear fields, ``cosmos`` their cosmologies, ``out`` the views of
    the outputs to fill, {name: (b, ...) float32}, on the mesh's device when
    ``out_on_device`` (then the FastPM outputs serve as the particle state)."""
    dev, dtype = mesh.device, mesh.dtype
    nc, box = config.nc, float(config.box)
    a0, af = config.a_start, config.a_final
    b = len(cosmos)

    def put(name, values):
        """Write ``values()``, (b, 3, nc^3), into the output ``name`` if it is wanted (cast
        to float32, moved to the output's device)."""
        if name in out:
            out[name].view(b, 3, -1).copy_(values())

    def col(scalar):
        """(b, 1, 1) tensor of scalar(cosmology, growth), evaluated once per distinct cosmology."""
        per = {c: scalar(c, growth_for(c)) for c in dict.fromkeys(cosmos)}
        return torch.as_tensor(np.array([per[c] for c in cosmos]).reshape(b, 1, 1), device=dev).to(dtype)

    def lpt(a, psi1, psi2, velocity):
        """x - q (or the momentum p, as sim.lpt) at a: D1 psi_1 (+ D2 psi_2)."""
        if velocity:
            x = col(lambda c, g: g.D1(a) * g.f1(a) * a ** 2 * c.E(a)) * psi1
            if psi2 is not None:
                x += col(lambda c, g: g.D2(a) * g.f2(a) * a ** 2 * c.E(a)) * psi2
            return x
        x = col(lambda c, g: g.D1(a)) * psi1
        if psi2 is not None:
            x += col(lambda c, g: g.D2(a)) * psi2
        return x

    kms = VELOCITY_UNIT_KMS / af
    with device_timer(timers, "lpt", dev):
        if from_noise:
            delta_k = linear_density_k(mesh, source, cosmos)
        else:
            delta_k = linear_field_k(mesh, source)
        psi1 = za_displacement(mesh, delta_k).view(b, 3, -1)
        put("za/disp", lambda: lpt(af, psi1, None, False))
        put("za/vel", lambda: lpt(af, psi1, None, True).mul_(kms))
        psi2 = lpt2_displacement(mesh, delta_k).view(b, 3, -1)
        del delta_k
        put("lpt2/disp", lambda: lpt(af, psi1, psi2, False))
        put("lpt2/vel", lambda: lpt(af, psi1, psi2, True).mul_(kms))
        if nbody is None:
            return
        n = nc ** 3

        def buffer(name):
            if name in out and out_on_device:
                return out[name].view(b, 3, n)
            return torch.empty((b, 3, n), dtype=torch.float32, device=dev)

        state = BatchState(disp=buffer("fastpm/disp"), mom=buffer("fastpm/vel"), a=a0)
        state.disp.copy_(lpt(a0, psi1, psi2, False))
        state.mom.copy_(lpt(a0, psi1, psi2, True))
        del psi1, psi2
    gravity, q = nbody
    with device_timer(timers, "fastpm", dev):
        run_fastpm(state, gravity, q, cosmos, af, config.steps)
        minimum_image_(state.disp, box)
        state.mom.mul_(kms)
    if not out_on_device:
        put("fastpm/disp", lambda: state.disp)
        put("fastpm/vel", lambda: state.mom)
    if "density" in out:
        M = out["density"].shape[-1]
        out["density"].view(b, M, M, M).copy_(density_contrast(q, state.disp, box, M))


def density_contrast(q, disp, box, nmesh):
    """CIC density contrast (B, M, M, M) of particles at q + disp (q (3, n), disp (B, 3, n))
    on an M^3 mesh: count * M^3 / n - 1."""
    pos = wrap_positions(torch.add(q, disp), box)
    rho = cic.paint(cic.Stencil(pos, nmesh, box))
    return rho * (nmesh ** 3 / q.shape[1]) - 1.0
