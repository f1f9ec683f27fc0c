"""The grid sigma check of a campaign (:mod:`cosmonet.sim.sanity`): the largest rms of the
linear density on the grid at a_final over the campaign's cosmologies, without the plan
(a campaign of 10^8 simulations is checked in milliseconds).

Cosmologies checked: a fixed one; every entry of a list or point of a grid; for a Latin
hypercube, the corners of its ranges (all 2^d of them up to d = 6 parameters, else each
parameter's ends with the others at the base): the grid sigma grows with the amplitude
and is monotonic in each parameter over any sensible range, so its largest value over
the hypercube lies at a corner.
"""
import itertools

from ..cosmology import parse_cosmology
from ..sim.sanity import grid_sigma, judge

#: a Latin hypercube with more parameters than this has its ends checked one at a time
MAX_CORNER_DIMS = 6


def campaign_cosmologies(spec):
    """The cosmologies of a validated cosmology block to check (see the module)."""
    from .plan import _base, _grid_points, _list_entries, _lhs_ranges, _mode, _point
    mode = _mode(spec)
    if mode == "fixed":
        return [parse_cosmology(spec)]
    if mode == "list":
        return _list_entries(spec)
    if mode == "grid":
        return _grid_points(spec)
    base, ranges = _base(spec), _lhs_ranges(spec)
    if len(ranges) <= MAX_CORNER_DIMS:
        return [_point(base, dict(zip(ranges, corner))) for corner in itertools.product(*ranges.values())]
    return [_point(base, {key: end}) for key, ends in ranges.items() for end in ends]


def check_campaign(cfg):
    """The warning line (or None) of the campaign ``cfg``'s largest grid sigma; InputError
    when it is above the refusal threshold. Rank 0 only (it calls pyccl)."""
    worst, which = -1.0, None
    seen = set()
    for cosmo in campaign_cosmologies(cfg.cosmology):
        if cosmo in seen:
            continue
        seen.add(cosmo)
        s = grid_sigma(cosmo, cfg.nc, cfg.box, cfg.a_final)
        if s > worst:
            worst, which = s, cosmo
    what = "config" if len(seen) == 1 else (f"config (at its cosmology Omega_m {which.Omega_m:g}, "
                                             f"sigma8 {which.sigma8_value():.3g})")
    return judge(worst, cfg.nc, cfg.box, cfg.a_final, what)
