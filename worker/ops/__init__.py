"""What operators see: tasks that end a job as failed end in FAILURE (``failures``), task
arguments shown as redacted summaries (``redact``), the task class that applies both
(``taskclass``), and Flower started with its ``/metrics`` behind the same basic auth
(``flower``)."""
