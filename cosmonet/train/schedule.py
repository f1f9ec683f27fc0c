"""A wall-clock training budget (``train.time_budget``, seconds) and the learning-rate
schedule fitted to it.

The clock starts when ``train()`` starts (data staging and model build included). Then:

1. **Warm-up.** Steps 1 .. ``budget_warmup_steps`` run at the full learning rate. The
   step time ``t_step`` is measured over the second half of them (the first half pays the
   one-off costs: allocator, cuDNN autotuning), between two device synchronisations.
2. **Horizon.** After the warm-up step W, at wall time ``t_W`` since the start::

       H = W + floor((time_budget x (1 - RESERVE) - t_W) / t_step)

   (RESERVE = 3% of the budget is left for the last checkpoint and anything outside the
   steps). With ``budget_step_seconds > 0`` no time is measured: ``t_step`` is that value
   and ``H = floor(time_budget / budget_step_seconds)``, reproducible (the tests use it).
3. **Schedule.** The learning rate factor is 1 before H is known and
   ``0.5 (1 + cos(pi min(step, H) / H))`` after (``scheduler: cosine``; ``constant``
   keeps 1): the cosine of ``cosmonet.train.loop`` with the horizon H in place of
   ``epochs x steps_per_epoch``.
4. **Stop.** Training stops after step H, or earlier when the wall clock (this run plus
   the time spent in the runs it resumes) reaches ``time_budget``; ``epochs`` and
   ``max_steps`` stay upper bounds. The trainer writes its checkpoint at the stop.

On several ranks every rank must stop after the same step (or a collective hangs): the
horizon is rank 0's (one all-reduce when it is fitted), and the wall-clock stop is agreed
(any rank out of time) every ``train.check_every`` steps; on one rank it is read every step
from the host clock, which costs no device synchronisation.

The horizon, step time and the seconds spent are the schedule object's attributes, which
``torch.optim.lr_scheduler.LambdaLR`` stores in its state dict, so a resumed run keeps
the horizon and the remaining budget: a run stopped and resumed follows the same
learning rates as one straight run with the same horizon.
"""
import math
import time

import torch

RESERVE = 0.03


class BudgetSchedule:
    """The learning-rate factor of a budgeted run (a callable for LambdaLR; see the module
    docstring). ``budget`` seconds, ``warmup`` steps, ``kind`` cosine | constant,
    ``step_seconds`` > 0 to fix the step time instead of measuring it."""

    def __init__(self, budget, warmup, kind="cosine", step_seconds=0.0):
        self.budget, self.warmup, self.kind = float(budget), max(2, int(warmup)), kind
        self.step_seconds = float(step_seconds) if step_seconds > 0 else None
        self.horizon = int(self.budget // self.step_seconds) if self.step_seconds else None
        self.spent_before = 0.0     # seconds used by the runs this one resumes
        self.spent = 0.0            # seconds used in all, updated by the trainer each step

    def __call__(self, step):
        if self.horizon is None or self.kind == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.horizon) / max(self.horizon, 1)))


class BudgetClock:
    """The trainer's side of the budget: measures, fits the horizon, says when to stop.

    Created at the start of ``train()``; ``attach(schedule)`` once the schedule exists
    (after a resume has restored its state); ``after_step(step)`` after every optimiser
    step returns True when training must stop. ``first_step``: seconds from the start of
    ``train()`` to the end of the first step of this run (data staging, model build and
    the first step's one-off costs), reported in the trainer's summary.
    """

    def __init__(self, device, backend=None, every=1):
        self.t0 = time.perf_counter()
        self.device = device
        self.backend = backend if backend is not None and backend.size > 1 else None
        self.every = max(1, int(every))
        self.sched = None
        self.mark = None            # (step, time) at the start of the measured window
        self.first_step = None      # seconds from train() to the end of this run's first step

    def attach(self, schedule):
        self.sched = schedule
        schedule.spent_before = schedule.spent
        return self

    def exhausted(self, step):
        """Whether a resumed run has nothing left to do (past its horizon or its budget)."""
        s = self.sched
        return s is not None and ((s.horizon is not None and step >= s.horizon) or s.spent_before >= s.budget)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def elapsed(self):
        return time.perf_counter() - self.t0

    def _rank0(self, value):
        """Rank 0's ``value`` on every rank (one all-reduce; the value itself on one rank)."""
        if self.backend is None:
            return value
        t = torch.tensor([float(value) if self.backend.rank == 0 else 0.0], dtype=torch.float64, device=self.device)
        return float(self.backend.allreduce_sum(t).cpu()[0])

    def _any(self, flag):
        """Whether ``flag`` holds on any rank (one all-reduce; the flag itself on one rank)."""
        if self.backend is None:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.device)
        return float(self.backend.allreduce_sum(t).cpu()[0]) > 0

    def report(self):
        """The budget's numbers for the trainer's summary (None without a budget)."""
        s = self.sched
        return None if s is None else {"budget_seconds": s.budget, "horizon": s.horizon,
                                       "step_seconds": s.step_seconds, "spent_seconds": s.spent}

    def after_step(self, step):
        if self.first_step is None:      # one device sync, at the first step only
            self._sync()
            self.first_step = self.elapsed()
        s = self.sched
        if s is None:
            return False
        if s.horizon is None:
            half = s.warmup // 2
            if step >= half and self.mark is None:
                self._sync()
                self.mark = (step, time.perf_counter())
            elif step >= s.warmup and self.mark is not None:
                self._sync()
                now = time.perf_counter()
                s.step_seconds = self._rank0((now - self.mark[1]) / max(step - self.mark[0], 1))
                left = s.budget * (1.0 - RESERVE) - (s.spent_before + now - self.t0)
                s.horizon = int(self._rank0(step + max(0, int(left // s.step_seconds))))
        s.spent = s.spent_before + self.elapsed()
        if s.horizon is not None and step >= s.horizon:
            return True
        if self.backend is None:
            return s.spent >= s.budget
        return self._any(s.spent >= s.budget) if step % self.every == 0 else False
