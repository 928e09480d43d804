"""``drmime-batch cluster-script``: print the job script an HPC cluster would submit.

Run it on the login node to check what ``drmime-batch run --cluster slurm|pbs|lsf`` will ask the
queue for (GPU request, cores, memory, walltime, prologue) before anything is submitted; with
``kubernetes`` it prints the ``DaskCluster`` manifest instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_commands"]

_KINDS = ("slurm", "pbs", "lsf", "kubernetes")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the ``cluster-script`` sub-command."""
    parser = subparsers.add_parser(
        "cluster-script",
        help="print the batch job script (or Kubernetes DaskCluster) a cluster would submit",
        description=(
            "Print the job script dask-jobqueue would submit for one worker job (slurm, pbs, "
            "lsf), or the DaskCluster manifest (kubernetes), from a cluster configuration file. "
            "Nothing is started or submitted; the scheduler address is a placeholder."
        ),
    )
    parser.add_argument("kind", choices=_KINDS, help="cluster kind")
    parser.add_argument(
        "--cluster-config",
        type=Path,
        metavar="FILE",
        default=None,
        help="YAML in dask-jobqueue's schema (jobqueue: slurm: ...) plus a drmime-batch: key",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from drmime_batch.engine._clusters import job_script

    text = job_script(args.kind, config_path=args.cluster_config)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
