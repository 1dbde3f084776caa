"""Settings, read from the environment: prefix ``IMAGEGEN_``, ``MODELLIX_*`` for the upstream."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .delivery.targets import DeliveryPolicy

#: The model's submit path as Modellix documents it (the official CLI drops ``/async``).
SUBMIT_PATH = "/api/v1/minimax/minimax-image-01-live-i2i/async"
TASK_PATH = "/api/v1/tasks/{task_id}"


class Settings(BaseSettings):
    """Everything a worker, beat, Flower or the CLI needs to know."""

    # hide_input_in_errors: a bad value (a token, a key) is never echoed in the error.
    model_config = SettingsConfigDict(
        env_prefix="IMAGEGEN_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/imagegen"
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_url: str | None = Field(
        default=None, description="Redis for the shared rate limiter; the broker's when unset."
    )

    modellix_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MODELLIX_API_KEY", "IMAGEGEN_MODELLIX_API_KEY")
    )
    modellix_base_url: str = Field(
        default="https://api.modellix.ai",
        validation_alias=AliasChoices("MODELLIX_BASE_URL", "IMAGEGEN_MODELLIX_BASE_URL"),
    )
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    upstream_concurrency: int = Field(default=3, ge=1, le=100_000)
    upstream_rpm: int = Field(default=100, ge=0, description="0 disables the shared limiter.")

    poll_initial_seconds: float = Field(
        default=3.0, gt=0, description="First poll after submit: about the usual task duration."
    )
    poll_interval_seconds: float = Field(default=1.0, gt=0, description="Second poll's delay.")
    poll_backoff: float = Field(default=1.5, ge=1.0)
    poll_max_interval_seconds: float = Field(default=10.0, gt=0)
    poll_jitter: float = Field(default=0.2, ge=0, le=1)
    poll_adaptive: bool = Field(
        default=True,
        description="Place polls by the durations learned from finished tasks (the poll_* "
        "settings then bound them); false: the configured schedule only.",
    )
    slot_probes: bool = Field(
        default=True,
        description="When a backlog waits and every slot is taken, POST the next job when a "
        "slot is likely free (a refused probe is never charged).",
    )
    retry_max_interval_seconds: float = Field(default=30.0, gt=0)
    default_deadline_seconds: int = Field(default=900, ge=1)

    resubmit_unknown: bool = False
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    stale_after_seconds: float = Field(
        default=60.0, gt=0, description="How late a job's next step may be before the sweeper acts."
    )
    heartbeat_seconds: float = Field(
        default=1.0, gt=0, le=30, description="How often a worker announces itself."
    )
    node_timeout_seconds: float = Field(
        default=6.0,
        gt=0,
        description="A worker silent for this long is dead: its jobs move on elsewhere.",
    )
    # Redis re-delivers an unacked message only after this: it is how long the unstarted
    # messages a killed worker had prefetched wait before another worker gets them (the
    # sweeper cannot help with requests that have no job row yet). Every countdown must stay
    # far below it, or an ETA message would be re-delivered while still waiting.
    visibility_timeout_seconds: int = Field(default=600, ge=10)

    storage_backend: Literal["local", "s3", "off"] = Field(
        default="local",
        description="Where result images are copied: local files (served by the API), "
        "S3-compatible object storage, or off (the upstream's expiring URLs only).",
    )
    storage_dir: Path = Field(
        default=Path(".imagegen/images"), description="The local store's directory."
    )
    s3_bucket: str | None = Field(default=None, description="The S3 store's bucket.")
    s3_prefix: str = Field(default="", description="A key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible server (MinIO, R2, ...); unset: AWS."
    )
    s3_region: str = "us-east-1"
    storage_url_ttl_seconds: int = Field(
        default=900, ge=1, le=7 * 24 * 3600, description="Lifetime of signed image URLs."
    )

    api_tokens: SecretStr | None = Field(
        default=None,
        description="Comma-separated tenant:token pairs of the HTTP API's bearer tokens.",
    )
    broker_tenant: str = Field(
        default="default",
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="The tenant of jobs that Celery producers send through the broker.",
    )
    api_max_body_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        description="Request bodies over this get 413 before they are read.",
    )
    api_broker_url: str | None = Field(
        default=None,
        description="The broker as the API reaches it: a producer's user, which may only "
        "push requests (unset: broker_url).",
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    worker_concurrency: int = Field(default=8, ge=1)
    worker_prefetch_multiplier: int = Field(
        default=4, ge=1, description="Messages a worker reserves per thread (Celery's setting)."
    )
    message_key: SecretStr | None = Field(
        default=None,
        description="Key of the workers' internal message signatures; unset: the one the "
        "database migration made (imagegen_secrets).",
    )
    infra_max_retries: int = Field(
        default=120,
        ge=1,
        description="Retries of a task whose database or Redis is away (backoff up to 30 s).",
    )
    webhook_secrets: SecretStr | None = Field(
        default=None,
        description="Comma-separated whsec_... secrets that sign webhooks; two during a "
        "rotation (every attempt is signed with each). Unset: requests with a webhook are "
        "refused.",
    )
    webhook_allow_hosts: str = Field(
        default="",
        description="Comma-separated hosts exempt from the https-only and public-address "
        "rules of webhook URLs (a local receiver).",
    )
    webhook_default_url: str | None = Field(
        default=None, description="A webhook every job's end goes to, besides its own."
    )
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)
    reply_queue_prefixes: str = Field(
        default="",
        description="Comma-separated prefixes a reply_to queue must start with (empty: any "
        "queue name the contract allows).",
    )
    delivery_schedule: str | None = Field(
        default=None,
        description="Comma-separated seconds between delivery attempts (±20% jitter); the "
        "default spans more than 24 hours.",
    )
    flower_basic_auth: SecretStr | None = None
    flower_port: int = 5555
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics exporter binds; another than loopback needs "
        "metrics_basic_auth.",
    )
    metrics_port: int = Field(default=9464, ge=1, le=65535, description="The exporter's port.")
    metrics_basic_auth: SecretStr | None = Field(
        default=None, description="user:password that every request to /metrics must carry."
    )
    log_format: Literal["json", "console"] = Field(
        default="json",
        description="How the services (worker, beat, api, flower, simulator) write their "
        "logs: one JSON object per line, or lines for people reading a terminal.",
    )

    @model_validator(mode="after")
    def _countdowns_below_visibility(self) -> Self:
        longest = max(
            self.poll_max_interval_seconds,
            self.retry_max_interval_seconds,
            self.poll_initial_seconds,
        )
        if longest * 4 > self.visibility_timeout_seconds:
            raise ValueError(
                "poll/retry intervals must stay below a quarter of visibility_timeout_seconds"
            )
        return self

    @model_validator(mode="after")
    def _heartbeats_fit(self) -> Self:
        # A node must miss several heartbeats before its peers take it for dead.
        if self.node_timeout_seconds < 3 * self.heartbeat_seconds:
            raise ValueError("node_timeout_seconds must be at least 3 heartbeats")
        return self

    @model_validator(mode="after")
    def _deliveries_make_sense(self) -> Self:
        # Checked at start, not at the first delivery: a bad value would otherwise leave
        # every delivery unrecorded and re-sent by the sweeper.
        from .delivery.webhooks import secret_problem, url_problem

        self.delivery_steps  # noqa: B018 - parses and checks the schedule
        for secret in self.webhook_secret_list:
            problem = secret_problem(secret)
            if problem is not None:
                raise ValueError(f"IMAGEGEN_WEBHOOK_SECRETS: {problem}")
        if len(self.webhook_secret_list) > 2:
            raise ValueError("IMAGEGEN_WEBHOOK_SECRETS: at most two (during a rotation)")
        if self.webhook_default_url:
            problem = url_problem(self.webhook_default_url, self.delivery_policy.allow_hosts)
            if problem is not None:
                raise ValueError(f"IMAGEGEN_WEBHOOK_DEFAULT_URL: {problem}")
            if not self.webhook_secret_list:
                raise ValueError("IMAGEGEN_WEBHOOK_DEFAULT_URL needs IMAGEGEN_WEBHOOK_SECRETS")
        return self

    @model_validator(mode="after")
    def _storage_makes_sense(self) -> Self:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("IMAGEGEN_STORAGE_BACKEND=s3 needs IMAGEGEN_S3_BUCKET")
        return self

    @property
    def api_token_map(self) -> dict[str, str]:
        """Each API bearer token and the tenant it names (ValueError naming a bad pair by its
        position; checked when the API starts, so a typo there stops no worker)."""
        from .api.auth import parse_tokens

        return parse_tokens(self.api_tokens.get_secret_value() if self.api_tokens else "")

    @property
    def delivery_policy(self) -> DeliveryPolicy:
        """The rules webhook URLs and reply queues are checked against."""
        return DeliveryPolicy(
            default_webhook=self.webhook_default_url or None,
            allow_hosts=frozenset(
                h.strip().lower() for h in self.webhook_allow_hosts.split(",") if h.strip()
            ),
            signing=bool(self.webhook_secret_list),
            reply_prefixes=tuple(
                p.strip() for p in self.reply_queue_prefixes.split(",") if p.strip()
            ),
        )

    @property
    def webhook_secret_list(self) -> tuple[str, ...]:
        """The webhook signing secrets, newest first."""
        raw = self.webhook_secrets.get_secret_value() if self.webhook_secrets else ""
        return tuple(s.strip() for s in raw.split(",") if s.strip())

    @property
    def delivery_steps(self) -> tuple[float, ...]:
        """Seconds between delivery attempts."""
        from .delivery.webhooks import DEFAULT_SCHEDULE

        if not self.delivery_schedule:
            return tuple(DEFAULT_SCHEDULE)
        try:
            steps = tuple(float(x) for x in self.delivery_schedule.split(",") if x.strip())
        except ValueError:
            raise ValueError("IMAGEGEN_DELIVERY_SCHEDULE: comma-separated seconds") from None
        if not steps or not all(0 < s <= 7 * 24 * 3600 for s in steps):
            raise ValueError("IMAGEGEN_DELIVERY_SCHEDULE: one or more steps of 0 to 604800 s")
        return steps

    @property
    def delivery_hold_seconds(self) -> float:
        """How long a claimed delivery attempt may take before the sweeper tries it again."""
        return self.webhook_timeout + 30.0

    @property
    def api_broker(self) -> str:
        """The broker URL the API sends requests through."""
        return self.api_broker_url or self.broker_url

    @property
    def limiter_redis_url(self) -> str:
        """Redis URL of the shared limiter."""
        return self.redis_url or self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
