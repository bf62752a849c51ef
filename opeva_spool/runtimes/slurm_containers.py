"""The command a Slurm job runs when its spec names an image: the image's engine on the compute node.

HPC clusters run no Docker daemon; they run unprivileged container tools on images kept as files:
- a directory (an unpacked image tree, as ``ch-convert`` makes) -> Charliecloud's ``ch-run``;
- a ``.sif`` file -> Apptainer's ``apptainer exec`` (or its older name, ``singularity``).
An image is a path *on the cluster* (absolute), never a registry name: compute nodes seldom
reach a registry, and pulling is the user's step before (docs/deploy.md). The share is bound at
the job root (``/data``), where the job expects it, as the Docker runtime mounts it.

``engines`` says which tools the cluster has (``probe_engines`` asks the login node once; the
compute nodes are assumed to carry the same software, as HPC sites do). Unknown (None): the
image's form decides and a missing tool fails the job at the cluster with its own message.
"""

from __future__ import annotations

from collections.abc import Collection

from ..exceptions import RuntimeFailure
from ..states import EndReason
from .slurm_cluster import Cluster

CHARLIECLOUD = "ch-run"
APPTAINERS = ("apptainer", "singularity")  # the same tool; Apptainer is the renamed Singularity
ENGINES = (CHARLIECLOUD, *APPTAINERS)
SIF_SUFFIX = ".sif"
# ch-run refuses to start without $USER (ch-run.c), and a job submitted with --export=NONE may lack
# it: set it from the job's own uid on the node, then exec ch-run with the arguments that follow.
WITH_USER = 'export USER="${USER:-$(id -un)}"; exec "$@"'


def container_argv(image: str, argv: list[str], share: str, job_root: str,
                   engines: Collection[str] | None = None) -> list[str]:
    """argv run inside ``image`` with ``share`` (the share's path on the cluster) bound at ``job_root``.

    Raises RuntimeFailure(image_missing) for an image this cluster cannot run, naming what it can.
    """
    bind = f"{share.rstrip('/') or '/'}:{job_root}"
    if image.startswith("/") and not image.endswith(SIF_SUFFIX) and _has(engines, CHARLIECLOUD):
        return ["sh", "-c", WITH_USER, "sh", CHARLIECLOUD, "--bind", bind, image.rstrip("/") or "/", "--", *argv]
    if image.startswith("/") and image.endswith(SIF_SUFFIX):
        apptainer = next((name for name in APPTAINERS if _has(engines, name)), None)
        if apptainer:
            return [apptainer, "exec", "--bind", bind, image, *argv]
    raise RuntimeFailure(EndReason.IMAGE_MISSING, f"the Slurm cluster cannot run the image {image!r}: "
                                                f"{supported(engines)}")


def supported(engines: Collection[str] | None) -> str:
    """What images a cluster with these engines runs, in words for the user."""
    forms = []
    if _has(engines, CHARLIECLOUD):
        forms.append("a Charliecloud image directory (an absolute path on the cluster)")
    if any(_has(engines, name) for name in APPTAINERS):
        forms.append(f"an Apptainer/Singularity image file (an absolute path ending in {SIF_SUFFIX})")
    if not forms:
        return f"it has no container tool ({', '.join(ENGINES)}); run a plain command instead"
    return "it runs " + " or ".join(forms)


def probe_engines(cluster: Cluster) -> frozenset[str]:
    """The container tools the cluster's login node has (one command)."""
    done = cluster.run(["sh", "-c", 'for tool; do command -v "$tool" >/dev/null && echo "$tool"; done; true',
                        "sh", *ENGINES])
    return frozenset(done.stdout.split()) & set(ENGINES)


def _has(engines: Collection[str] | None, name: str) -> bool:
    # Unknown engines: trust the image's form (the cluster reports a missing tool when the job runs).
    if engines is None:
        return name in (CHARLIECLOUD, APPTAINERS[0])
    return name in engines
