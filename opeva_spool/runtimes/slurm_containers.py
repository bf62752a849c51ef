"""Containers in a Slurm job: the command that runs a job's ``image`` on a cluster node.

Placeholder until the container support lands (Charliecloud directory images, Apptainer/Singularity
``.sif`` files): every image is refused, so a job naming one fails at start with a clear reason
instead of running its command outside the container it asked for.
"""

from __future__ import annotations

from ..exceptions import RuntimeFailure
from ..states import EndReason


def container_argv(image: str, argv: list[str], share: str, job_root: str) -> list[str]:
    """The argv that runs ``argv`` inside ``image`` with ``share`` (the shared root as the node sees it)
    mounted at ``job_root``; RuntimeFailure when this cluster cannot run that image."""
    raise RuntimeFailure(EndReason.IMAGE_MISSING, f"the slurm runtime cannot run container images yet ({image!r}); "
                                                  "leave 'image' out to run the command on the node")
