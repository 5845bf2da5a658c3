"""Training runs on disk: a run directory's files (`directory`), the content-addressed cache of
them (`cache`), and the executor that trains what a build is missing (`executor`)."""

from .cache import RunCache, for_profile
from .directory import Run, check_replaceable, load_model, load_run, save_run

__all__ = ["Run", "RunCache", "check_replaceable", "for_profile", "load_model", "load_run", "save_run"]
