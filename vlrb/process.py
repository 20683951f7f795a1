"""What a process of a vlrb job needs to know about itself: which process of a multi-process job it is, and
where Lightning's console lines go.

Lightning's DDP launcher starts one process per device by running the entry point again (the same command, with
`LOCAL_RANK`, `NODE_RANK` and `WORLD_SIZE` set); torchrun sets `RANK`; SLURM sets `SLURM_PROCID`. Every process runs
the job, but only the first one claims the run directory, takes the data.root lock and writes results: the others
follow it (they take part in the Lightning fit or predict and write nothing of their own).
"""
from __future__ import annotations

import logging
import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    """True in a single-process job and in the first process of a multi-process one."""
    for var in RANK_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value and value != "0":
            return False
    return True


def import_lightning():
    """`import lightning`, with its console lines sent through the job's own logging (Hydra's console and job log,
    where vlrb filters them) instead of the extra console handler Lightning installs on import."""
    import lightning

    if not logging.getLogger().handlers:  # no job logging (a notebook, a script): Lightning's own handler stays
        return lightning
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    return lightning


SWEEP_DIR_VARIABLE = "VLRB_SWEEP_DIR"


def share_sweep_dir(sweep_dir) -> None:
    """Called by the first process of a multirun: the DDP processes Lightning starts later inherit the folder."""
    if is_rank_zero():
        os.environ[SWEEP_DIR_VARIABLE] = str(sweep_dir)


def follow_first_process(argv: list[str]) -> None:
    """The command-line additions of a DDP helper process (Lightning starts it with the first process's command).

    Hydra's own console lines come from the first process only. Inside a multirun the helper runs the whole sweep in
    step with the first process (every job's fit needs both): point it at the first process's sweep folder (the
    command's `${now:...}` would make a new one)."""
    if is_rank_zero():
        return
    argv.append("hydra/hydra_logging=disabled")  # the first process prints Hydra's own lines (sweep jobs) once
    sweep = os.environ.get(SWEEP_DIR_VARIABLE)
    if sweep and ("-m" in argv or "--multirun" in argv):
        argv.append(f'hydra.sweep.dir="{sweep}"')
