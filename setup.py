from setuptools import find_packages, setup

setup(
    name="opeva-spool",
    version="0.1.0",
    description="Filesystem-native job spooler for OPEVA simulation and training jobs",
    packages=find_packages(include=["opeva_spool", "opeva_spool.*"]),
    # The web dashboard's static files (served at /ui/), with the vendored libraries and their licences.
    package_data={"opeva_spool": ["ui/*.html", "ui/pages/*.html", "ui/*.js", "ui/*.css", "ui/vendor/*.md",
                                  "ui/vendor/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        "bottle>=0.13",
        "waitress>=3.0",
        "watchdog>=4.0",
        "filelock>=3.12",
        "docker>=7.0",
        "pymongo>=4.6",
        "pyyaml>=6.0",
        "pandas>=2.0",
        "prometheus_client>=0.17",
        "rich>=13.0",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3", "nx-27017", "ruff==0.17.6", "selenium>=4.10",
                             "schemathesis>=4.0", "openapi-spec-validator>=0.7"]},
    entry_points={"console_scripts": ["opeva-spool=opeva_spool.cli:main"]},
)
