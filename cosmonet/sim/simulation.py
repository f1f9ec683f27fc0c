"""One simulation: linear field -> ZA and 2LPT -> FastPM, on any number of ranks.

Particles sit on the ``nc^3`` Lagrangian grid q = (i, j, k) L / nc; rank r owns the
particles of its x-slab of that grid, in C order, for the whole run (forces reach them
through :class:`~cosmonet.mesh.Layout`), so outputs are indexed by q on every rank.
"""
from dataclasses import asdict, dataclass, field

import numpy as np

from ..cosmology import Cosmology, growth_for
from ..errors import InputError
from ..io.schema import output_group
from ..mesh import ParticleMesh, get_mesh
from ..mesh.pm import release_mesh
from ..timing import Timers
from .fastpm import GravitySolver, ParticleState, run_fastpm
from .linear import linear_density_from_field, linear_density_k
from .lpt import combine_into, lpt2_displacement, za_displacement

_NONE = np.empty(0)   # the absent second term of combine_into

#: km/s per unit of FastPM momentum divided by a: v = a dx/dt = 100 p / a km/s for
#: p in Mpc/h (H0 = 100 h km/s/Mpc).
VELOCITY_UNIT_KMS = 100.0


def _need(ok, msg):
    if not ok:
        raise InputError(msg)


def check_save_a(values, a_start, a_final, steps, name="save_a"):
    """``values`` (a sequence of numbers) as the tuple of output scale factors, a_final
    appended when missing, or ``()`` when a_final is the only output; InputError (one
    line naming ``name``) for a non-number, an unsorted or repeated list, a value outside
    (a_start, a_final], two values with the same group name (4 decimals) or more outputs
    than ``steps``."""
    from ..io.schema import output_group
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise InputError(f"{name} must be a list of scale factors (got {values!r})")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
            raise InputError(f"{name} must hold numbers (got {v!r})")
        out.append(float(v))
    for lo, hi in zip(out[:-1], out[1:]):
        if hi == lo:
            raise InputError(f"{name} lists a = {hi:g} twice")
        if hi < lo:
            raise InputError(f"{name} must be ascending (got {lo:g} before {hi:g})")
    for v in out:
        if not a_start < v <= a_final:
            raise InputError(f"{name} value {v:g} is outside (a_start, a_final] = ({a_start:g}, {a_final:g}]")
    if not out or out[-1] != a_final:
        out.append(float(a_final))
    names = [output_group(v) for v in out]
    for lo, hi, n1, n2 in zip(out[:-1], out[1:], names[:-1], names[1:]):
        if n1 == n2:
            raise InputError(f"{name} values {lo:g} and {hi:g} share the output name {n1} (4 decimals)")
    if len(out) > steps:
        raise InputError(f"{name} has {len(out)} outputs (a_final included) but steps is {steps}: "
                         f"each output needs at least one step")
    return () if len(out) == 1 else tuple(out)


@dataclass(frozen=True)
class SimParams:
    """The resolution and time stepping of a simulation (lengths in Mpc/h), checked here
    once for one simulation (:class:`SimConfig`) and a campaign of them
    (:class:`~cosmonet.campaign.config.CampaignConfig`).

    nc: particles per side (and LPT mesh); box: side in Mpc/h; steps: FastPM KDK steps;
    boost: force mesh = boost * nc; a_start: FastPM start (2LPT ICs); a_final: end.
    """

    nc: int = 32
    box: float = 128.0
    steps: int = 10
    boost: float = 2
    a_start: float = 0.1
    a_final: float = 1.0
    save_a: tuple = ()

    def __post_init__(self):
        _need(isinstance(self.nc, (int, np.integer)) and self.nc >= 2, f"nc must be an integer >= 2 (got {self.nc})")
        _need(np.isfinite(self.box) and self.box > 0, f"box must be > 0 Mpc/h (got {self.box})")
        _need(isinstance(self.steps, (int, np.integer)) and self.steps >= 1, f"steps must be an integer >= 1 (got {self.steps})")
        _need(np.isfinite(self.boost) and self.boost >= 1 and float(self.boost * self.nc).is_integer(),
              f"boost must be >= 1 with boost * nc an integer (got {self.boost})")
        _need(0 < self.a_start < self.a_final <= 4, f"a_start must satisfy 0 < a_start < a_final <= 4 "
              f"(got a_start={self.a_start}, a_final={self.a_final})")
        object.__setattr__(self, "save_a", check_save_a(self.save_a, self.a_start, self.a_final, self.steps))

    @property
    def outputs(self):
        """Scale factors of every output, ascending, the last a_final."""
        return tuple(self.save_a) or (float(self.a_final),)

    @property
    def force_nmesh(self):
        """Cells per side of the FastPM force mesh: boost * nc."""
        return int(round(self.boost * self.nc))


@dataclass(frozen=True)
class SimConfig(SimParams):
    """One simulation: :class:`SimParams` plus the seed of its Gaussian initial
    conditions and its cosmology."""

    seed: int = 42
    cosmology: Cosmology = field(default_factory=Cosmology.planck15)

    def __post_init__(self):
        super().__post_init__()
        _need(0 <= int(self.seed) < 2 ** 63, f"seed must be a non-negative integer (got {self.seed})")

    def attrs(self):
        """Root attributes of a simulation file (HDF5-friendly scalars)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("cosmology", "save_a")}
        d.update(box_size=float(self.box), force_nmesh=self.force_nmesh)
        if self.save_a:            # several outputs: their a and the steps of each segment
            from .fastpm import segment_steps
            d.update(save_a=np.array(self.save_a, np.float64),
                     save_steps=np.array(segment_steps(self.a_start, self.save_a, self.steps), np.int64))
        d.update(self.cosmology.to_dict())
        return d


@dataclass
class SimResult:
    """Local slabs of every output field, shape (3, nx, nc, nc), plus the particle mesh."""

    fields: dict
    pm: ParticleMesh
    config: SimConfig
    timers: Timers


def lagrangian_positions(pm):
    """q of the local particles, (n, 3) in Mpc/h, C order over the local slab."""
    x, y, z = pm.real_coords()
    shape = pm.real_shape
    return np.stack([np.broadcast_to(c, shape).ravel() for c in (x, y, z)], axis=1)


def to_grid(values, pm):
    """(n, 3) per-particle values -> (3, nx, nc, nc) float32 field."""
    return np.ascontiguousarray(values.T.reshape((3,) + pm.real_shape), dtype=np.float32)


def minimum_image(disp, boxsize):
    """Wrap displacements into [-L/2, L/2)."""
    return np.mod(disp + 0.5 * boxsize, boxsize) - 0.5 * boxsize


def run_simulation(cfg, comm, linear_field=None, timers=None, progress=None, fields=None, sink=None):
    """Run ZA, 2LPT and FastPM for ``cfg`` on ``comm``; returns a :class:`SimResult`.

    With several outputs (``cfg.save_a``) the fields of each output a before a_final
    are named ``a_A.AAAA/NAME/disp`` (:func:`~cosmonet.io.schema.output_group`), those at
    a_final ``NAME/disp`` as with one output.
    ``linear_field``: the real-space delta_lin at a = 1, an (nc, nc, nc) array (each rank
    reads its slab; a memory-mapped ``.npy`` works), replacing the Gaussian field from ``cfg.seed``. ``progress(step, a)`` is called on every rank.
    ``sink(name, local, x0)``: when given, each field goes there as soon as it is made (the
    ZA and 2LPT fields before the N-body steps) and is not kept, so the result's ``fields``
    is empty (:class:`cosmonet.io.simwriter.SimFileWriter` writes them to a file), and the
    LPT mesh's FFT buffers are freed before the N-body steps (a one-off run). Called
    on every rank in the same order; timed as "write" (for the ZA and 2LPT fields, inside
    "lpt").
    """
    timers = Timers() if timers is None else timers
    cosmo = cfg.cosmology
    pm = get_mesh(cfg.nc, cfg.box, comm, dtype=np.float64, timers=timers)
    with timers("setup"):
        growth = growth_for(cosmo)
    keep = (lambda name: True) if fields is None else (lambda name: name in fields)
    out = _FieldSink(sink, pm.x0, timers)
    af, a0 = cfg.a_final, cfg.a_start
    with timers("lpt"):
        if linear_field is not None:
            delta_k = linear_density_from_field(pm, linear_field)
        else:
            delta_k = linear_density_k(pm, cfg.seed, lambda k: cosmo.linear_power(k))
        psi1 = za_displacement(pm, delta_k)      # (3, nx, nc, nc) float64
        psi2 = lpt2_displacement(pm, delta_k)
        del delta_k
        for a in cfg.outputs:
            prefix = "" if a == af else output_group(a) + "/"
            vel = VELOCITY_UNIT_KMS / a
            D1, D2 = growth.D1(a), growth.D2(a)
            # the formulae of lpt.lpt_displacement / lpt_momentum, one component at a time
            p1, p2 = growth.D1(a) * growth.f1(a), growth.D2(a) * growth.f2(a)
            m = vel * (a ** 2 * cosmo.E(a))
            for name, c1, c2, box in (("za/disp", D1, None, cfg.box), ("za/vel", p1, None, m),
                                      ("lpt2/disp", D1, D2, cfg.box), ("lpt2/vel", p1, p2, m)):
                if keep(name):
                    disp = name.endswith("disp")
                    out.put(prefix + name, _per_component(psi1, psi2, c1, c2, box if disp else None,
                                                          None if disp else box))
        n = psi1[0].size
        m0 = a0 ** 2 * cosmo.E(a0)
        state = ParticleState(
            disp=_per_component(psi1, psi2, growth.D1(a0), growth.D2(a0), None, None, particles=n),
            mom=_per_component(psi1, psi2, growth.D1(a0) * growth.f1(a0), growth.D2(a0) * growth.f2(a0),
                               None, m0, particles=n),
            a=a0, lattice=(cfg.nc, pm.x0 * cfg.nc * cfg.nc, float(cfg.box)))
        del psi1, psi2                           # the LPT meshes are freed before the N-body steps
    if sink is not None:                     # a one-off run: no next simulation reuses the LPT mesh
        release_mesh(pm)
    pm_force = get_mesh(cfg.force_nmesh, cfg.box, comm, dtype=np.float32, timers=timers)
    solver = GravitySolver(pm_force, cfg.nc ** 3)

    def snapshot(a, state=state):      # an output before a_final: copies, the state runs on
        for name, arr in _fastpm_fields(state, pm, cfg.box, a, keep, copy=True):
            out.put(output_group(a) + "/" + name, arr)

    run_fastpm(state, solver, growth, cosmo.Omega_m, af, cfg.steps, progress=progress, outputs=cfg.outputs,
               on_output=snapshot)
    for name, arr in _fastpm_fields(state, pm, cfg.box, af, keep, copy=False):
        out.put(name, arr)
        del arr
    del state, snapshot
    return SimResult(fields=out.kept, pm=pm, config=cfg, timers=timers)


class _FieldSink:
    """Where run_simulation's fields go: kept in ``kept``, or handed to ``sink(name, local,
    x0)`` (timed as "write") and dropped."""

    def __init__(self, sink, x0, timers):
        self.sink, self.x0, self.timers, self.kept = sink, x0, timers, {}

    def put(self, name, arr):
        if self.sink is None:
            self.kept[name] = arr
        else:
            with self.timers("write"):
                self.sink(name, arr, self.x0)


def _fastpm_fields(state, pm, box, a, keep, copy):
    """(name, float32 (3, nx, nc, nc) field) of ``fastpm/disp`` (minimum image, Mpc/h) and
    ``fastpm/vel`` (km/s) of ``state`` at scale factor ``a``, those ``keep`` selects.
    ``copy=False`` frees each state array once its output is built."""
    vel = VELOCITY_UNIT_KMS / a
    for name, attr, coef, wrap in (("fastpm/disp", "disp", 1.0, True), ("fastpm/vel", "mom", vel, False)):
        values = getattr(state, attr)
        if not copy:
            setattr(state, attr, None)   # each state array is freed once its output is built
        if keep(name):               # float64 arithmetic, one element at a time (lpt.combine_into)
            arr = np.empty((3,) + pm.real_shape, np.float32)
            for d in range(3):
                combine_into(values[:, d], _NONE, coef, 0.0, 1.0, box, False, False, wrap, arr[d].reshape(-1))
            yield name, arr
        del values


def _per_component(psi1, psi2, c1, c2, box=None, factor=None, particles=None):
    """float32 field ``factor * (c1 psi1 + c2 psi2)`` (``c2 = None``: psi1 only), computed
    in float64 one element at a time (:func:`~cosmonet.sim.lpt.combine_into`), wrapped to the
    minimum image when ``box`` is given: (3, nx, nc, nc), or (particles, 3) when
    ``particles`` is given."""
    out = np.empty((3,) + psi1.shape[1:] if particles is None else (particles, 3), np.float32)
    for d in range(3):
        combine_into(psi1[d].reshape(-1), _NONE if c2 is None else psi2[d].reshape(-1), c1,
                     0.0 if c2 is None else c2, 1.0 if factor is None else factor,
                     1.0 if box is None else box, c2 is not None, factor is not None, box is not None,
                     out[d].reshape(-1) if particles is None else out[:, d])
    return out


def gather_fields(result, root=0):
    """Full (3, nc, nc, nc) arrays of every field on ``root`` of the result's communicator
    (an empty dict elsewhere). Collective."""
    comm = result.pm.comm
    full = {}
    for name, local in result.fields.items():
        parts = comm.gather(local, root=root)
        if comm.rank == root:
            full[name] = np.concatenate(parts, axis=1)
    return full


def density_contrast(result, nmesh, root=0):
    """CIC density contrast of the FastPM particles on an ``nmesh``^3 mesh, (1, M, M, M)
    float32 on ``root`` (None elsewhere). Needs ``fastpm/disp`` in the result. Collective."""
    cfg = result.config
    pm_d = get_mesh(nmesh, cfg.box, result.pm.comm, dtype=np.float32, timers=result.timers)
    disp = result.fields["fastpm/disp"].reshape(3, -1).T
    pos = np.mod(lagrangian_positions(result.pm) + disp, cfg.box)
    rho = pm_d.paint(pos)
    delta = rho * (nmesh ** 3 / cfg.nc ** 3) - 1.0
    full = pm_d.gather_real(delta.astype(np.float32), root=root)
    return None if full is None else full[None]
