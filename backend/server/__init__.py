"""The backend server (`python -m backend serve`): the protocol in ``backend.protocol``, the
request loop in ``core``, shared-memory frames in ``shm``, jobs in ``jobs``.

Job kinds register here: ``register_job_kind("train", make_train_job)`` (see ``jobs``).
Importing this package stays torch-free.
"""

from .jobs import (JobCancelled, JobContext, JobFailed, JobParamError, job_kinds,
                   register_job_kind)

__all__ = ["JobCancelled", "JobContext", "JobFailed", "JobParamError", "job_kinds", "register_job_kind"]
