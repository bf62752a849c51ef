"""Runtimes: how an agent runs one attempt of a job (a subprocess, a Docker container)."""


def make_runtime(settings):
    if settings.runtime == "docker":
        from .docker import DockerRuntime

        return DockerRuntime(settings)
    from .process import ProcessRuntime

    return ProcessRuntime(settings.shared_root, settings.lock_dir)
