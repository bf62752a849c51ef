"""opeva-spool: a filesystem-native job spooler for OPEVA simulation and training jobs."""

__version__ = "0.1.0"
