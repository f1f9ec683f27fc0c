"""Cloud-in-cell (CIC) paint and readout for a batch of boxes, as scatter-add and gather.

Positions are ``(B, 3, n)`` in Mpc/h; the mesh has ``N`` cells of ``H = BoxSize / N`` per
side, cell i at x = i H (cell corners, as :mod:`cosmonet.mesh.cic`). A particle's lower
cell is ``floor(x N / L)`` wrapped into [0, N), its weights ``1 - d`` and ``d`` with d the
fractional offset, periodically on every axis. The mesh is flattened to ``(B, N^3)``, so
one ``scatter_add_`` / ``gather`` along its last axis serves the whole batch per corner.
Paint and readout use the same stencil and are exact adjoints of each other.

Memory: a stencil keeps 6 partial flat indices (int32 on the CPU with torch >= 2.8, which
takes int32 indices in ``gather`` / ``scatter_add_``, when N^3 < 2^31; else int64 -- on
CUDA too, where int32 indices have not been checked on a device yet) and 6 partial
weights per particle -- 48 bytes per particle with float32 positions and int32 indices,
72 with int64 -- and nothing else of the positions it was built from.
"""
import torch

_INT32_INDEX = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 8)


def index_dtype(n_cells, device="cpu"):
    """The dtype of flat cell indices into ``n_cells`` cells on ``device``: int32 on the
    CPU where gather and scatter take int32 indices (torch >= 2.8) and they fit, else int64."""
    cpu = torch.device(device).type == "cpu"
    return torch.int32 if cpu and _INT32_INDEX and n_cells < 2 ** 31 else torch.int64


class Stencil:
    """The 8 CIC corners (flat indices into a box's N^3 cells) and weights of every
    particle of ``pos`` (B, 3, n), wrapped into [0, boxsize), on an ``Nmesh^3`` mesh.

    Build once per particle configuration; :func:`paint` and :func:`readout` then reuse it.
    """

    def __init__(self, pos, Nmesh, boxsize):
        B, _, n = pos.shape
        N = int(Nmesh)
        self.B, self.n, self.N = B, n, N
        f = pos * (N / float(boxsize))
        lower = torch.floor(f)
        d = f.sub_(lower)                    # the fractional offset, in f's memory
        # pos in [0, L): the lower cell is N only by rounding of x N / L, and then d ~ 0
        lower.sub_((lower >= N).to(lower.dtype), alpha=N)
        i0 = lower.to(index_dtype(N ** 3, pos.device))
        del lower
        i1 = i0 + 1
        i1.masked_fill_(i1 == N, 0)
        # partial index and weight along x and y: (2, 2) lists of (B, n) tensors; along z
        # copies (not views) so that i0, i1 and d are freed here
        ix = [i0[:, 0] * (N * N), i1[:, 0] * (N * N)]
        iy = [i0[:, 1] * N, i1[:, 1] * N]
        wx = [1.0 - d[:, 0], d[:, 0]]
        wy = [1.0 - d[:, 1], d[:, 1]]
        self.ixy = [[ix[a] + iy[b] for b in (0, 1)] for a in (0, 1)]
        self.wxy = [[wx[a] * wy[b] for b in (0, 1)] for a in (0, 1)]
        self.iz = [i0[:, 2].clone(), i1[:, 2].clone()]
        self.wz = [1.0 - d[:, 2], d[:, 2].clone()]

    def corners(self):
        """Yield (index, weight), each (B, n), for the 8 corners."""
        for a in (0, 1):
            for b in (0, 1):
                for c in (0, 1):
                    yield self.ixy[a][b] + self.iz[c], self.wxy[a][b] * self.wz[c]


def paint(stencil, mass=None, out=None):
    """Particle count per cell (weighted by ``mass`` (B, n) when given): (B, N, N, N).

    ``out``: a (B, N^3) tensor to fill (zeroed here), else a new one in the dtype of the
    positions.
    """
    s = stencil
    if out is None:
        out = torch.zeros(s.B, s.N ** 3, dtype=s.wz[0].dtype, device=s.wz[0].device)
    else:
        out.zero_()
    for idx, w in s.corners():
        if mass is not None:
            w = w * mass
        out.scatter_add_(1, idx, w)
    return out.view(s.B, s.N, s.N, s.N)


def readout(stencil, field):
    """CIC-interpolate ``field`` (B, C, N, N, N) at the stencil's particles: (B, C, n)."""
    s = stencil
    B, C = field.shape[:2]
    flat = field.reshape(B, C, s.N ** 3)
    out = None
    for idx, w in s.corners():
        term = torch.gather(flat, 2, idx.unsqueeze(1).expand(B, C, s.n)) * w.unsqueeze(1)
        out = term if out is None else out.add_(term)
    return out
