"""Runtimes: how an agent runs one attempt of a job (a subprocess, a Docker container, a Slurm batch job)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # kept out of the guard's imports (python -m opeva_spool.runtimes.guard)
    from ..settings import Settings
    from .base import Runtime


def make_runtime(settings: Settings) -> Runtime:
    if settings.runtime == "docker":
        from .docker import DockerRuntime

        return DockerRuntime(settings)
    if settings.runtime == "slurm":
        from .slurm import SlurmRuntime

        return SlurmRuntime(settings)
    from .process import ProcessRuntime

    return ProcessRuntime(settings)
