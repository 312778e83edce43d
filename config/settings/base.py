"""Settings shared by every environment, read from the environment (12-factor).

Environment-specific modules (local, production, test) import this and override.
Every variable is parsed strictly by django-environ: a malformed value fails at start-up.
"""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

SECRET_KEY = env.str("DJANGO_SECRET_KEY")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "tenants",
    "analytics",
    "mlops",
    "alerts",
]

MIDDLEWARE = [
    "config.middleware.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_config(url: str) -> dict:
    """Parse DATABASE_URL and add the per-vendor options Vigil relies on."""
    config = env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Web, worker and beat share one SQLite file in local runs: WAL lets readers
        # run beside the writer, IMMEDIATE takes the write lock up front so two
        # writers queue on `timeout` instead of failing with "database is locked".
        config["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    else:
        # Ingest reuses its connection (and its COPY staging table) across requests.
        config["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
        config["CONN_HEALTH_CHECKS"] = True
    return config


DATABASES = {"default": database_config(env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'vigil.sqlite3'}"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# An ingest body of 10,000 points is ~1.5 MB of JSON; leave room, refuse the absurd.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("VIGIL_MAX_BODY_BYTES", default=16 * 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.auth.HasScope"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "config.pagination.CursorPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Vigil API",
    "DESCRIPTION": "Multi-tenant metrics ingestion, anomaly detection and alerting.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Choice sets used by several serializers get one name in the schema.
    "ENUM_NAME_OVERRIDES": {
        "AlertRuleKindEnum": "alerts.models.AlertRule.Kind",
        "IncidentStatusEnum": "alerts.models.Incident.Status",
        "DeliveryStatusEnum": "alerts.models.Delivery.Status",
        "SeverityEnum": "alerts.models.Severity",
        "NotificationEventEnum": "alerts.models.Notification.Event",
        "ModelVersionStatusEnum": "mlops.models.ModelVersion.Status",
        "ScopeKindEnum": "mlops.models.ModelVersion.ScopeKind",
        "TrainScopeKindEnum": "mlops.api.serializers.TRAINABLE_SCOPE_KINDS",
        "CalendarEventKindEnum": "mlops.models.CalendarEvent.Kind",
        "DriftActionEnum": "mlops.models.DriftReport.Action",
    },
}

# --- Celery -----------------------------------------------------------------------------
# One place for queues and routing: every kind of work has its own queue so each can be
# scaled by its own workers (`celery -A config worker -Q detect`).
VIGIL_QUEUES = ("ingest", "rollup", "detect", "train", "drift", "alerts", "webhooks")

# Shared by every process in production (Redis): the rescan keeps its watermark here, so a
# per-process memory cache (the default, fine for one machine) only makes it repeat work.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
CELERY_TASK_DEFAULT_QUEUE = "ingest"
CELERY_TASK_ROUTES = {
    "analytics.tasks.ingest_batch_process": {"queue": "ingest"},
    "analytics.tasks.ingest_batch_roll_up": {"queue": "rollup"},
    "analytics.tasks.ingest_batches_sweep": {"queue": "ingest"},
    "analytics.tasks.rollups_refresh": {"queue": "rollup"},
    "analytics.tasks.rollups_catch_up": {"queue": "rollup"},
    "analytics.tasks.retention_enforce": {"queue": "rollup"},
    "analytics.tasks.series_detect": {"queue": "detect"},
    "analytics.tasks.series_rescore": {"queue": "detect"},
    "analytics.tasks.anomalies_rescan": {"queue": "detect"},
    "analytics.tasks.nodes_detect": {"queue": "detect"},
    "analytics.tasks.node_detect": {"queue": "detect"},
    "alerts.tasks.rules_evaluate": {"queue": "alerts"},
    "alerts.tasks.tenant_rules_evaluate": {"queue": "alerts"},
    "alerts.tasks.series_rules_evaluate": {"queue": "alerts"},
    "alerts.tasks.group_flush": {"queue": "alerts"},
    "alerts.tasks.notifications_sweep": {"queue": "alerts"},
    "mlops.tasks.models_train": {"queue": "train"},
    "mlops.tasks.scopes_train": {"queue": "train"},
    "mlops.tasks.version_train": {"queue": "train"},
    "mlops.tasks.models_drift": {"queue": "drift"},
    "mlops.tasks.versions_drift": {"queue": "drift"},
    "alerts.tasks.delivery_attempt": {"queue": "webhooks"},
    "alerts.tasks.deliveries_sweep": {"queue": "webhooks"},
}
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Acks-late is opt-in per task (only idempotent bodies); when on, a worker that dies
# mid-task hands the message back instead of dropping it.
CELERY_TASK_ACKS_LATE = False
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A prefork child whose resident memory grew past this (KiB) is replaced once its task ends:
# training and node detection hold a model each, and memory freed by Python is not always
# returned to the system.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", default=1_048_576)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
# Redis redelivers an unacked message after the visibility timeout: it must exceed the
# hard time limit, or a slow but healthy task would run twice at once.
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
# Publishing happens after commit inside a request: fail fast when the broker is down
# (the ingest outbox sweeper re-publishes) rather than hold the client for minutes.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# --- Vigil ------------------------------------------------------------------------------
# How far in the future a point's timestamp may lie (clock skew allowance).
VIGIL_INGEST_MAX_FUTURE_SECONDS = env.int("VIGIL_INGEST_MAX_FUTURE_SECONDS", default=300)
# A late point older than this may not change an hour that is already rolled up (it is
# refused per point); within it, late points revise their buckets.
VIGIL_ROLLUP_LATENESS_SECONDS = env.int("VIGIL_ROLLUP_LATENESS_SECONDS", default=3600)
# An ingest batch not processed after this long is re-published by the sweeper.
VIGIL_INGEST_SWEEP_AFTER_SECONDS = env.int("VIGIL_INGEST_SWEEP_AFTER_SECONDS", default=120)
# Raw point partitions (PostgreSQL) are created this many days ahead.
VIGIL_PARTITIONS_AHEAD_DAYS = env.int("VIGIL_PARTITIONS_AHEAD_DAYS", default=3)

# Anomaly detection (analytics/anomalies.py; README "Anomaly detection pipeline").
# The streaming detector of every series (analytics.detection registry) and the node-level
# (multivariate) one. Changing either resets the states it concerns on their next run.
VIGIL_DETECTOR = env.str("VIGIL_DETECTOR", default="ensemble")
VIGIL_NODE_DETECTOR = env.str("VIGIL_NODE_DETECTOR", default="isolation_forest")
# Anomalous points at most this many sampling intervals apart are one anomaly (one row);
# an open anomaly closes once the series is this far past its end.
VIGIL_ANOMALY_GAP_SAMPLES = env.int("VIGIL_ANOMALY_GAP_SAMPLES", default=10)
# Points of one series scored per detection run (the rest in a follow-up message), and
# points learned silently when a series' detector or sensitivity changed.
VIGIL_DETECT_MAX_POINTS = env.int("VIGIL_DETECT_MAX_POINTS", default=50_000)
VIGIL_DETECT_WARMUP_POINTS = env.int("VIGIL_DETECT_WARMUP_POINTS", default=50_000)
# The rescan re-publishes detection for a series whose newest point waited this long unscored.
VIGIL_DETECT_GRACE_SECONDS = env.int("VIGIL_DETECT_GRACE_SECONDS", default=120)
# How far back the rescan looks: for unscored series, for active nodes, and for rollup
# revisions when it has no watermark (first run, cache flushed).
VIGIL_RESCAN_LOOKBACK_SECONDS = env.int("VIGIL_RESCAN_LOOKBACK_SECONDS", default=6 * 3600)
# Rollup revisions are read this long after they were stamped: a refresh commits at most
# its task's hard time limit after stamping `revised_at`.
VIGIL_RESCAN_LAG_SECONDS = env.int("VIGIL_RESCAN_LAG_SECONDS", default=CELERY_TASK_TIME_LIMIT)
# A minute revised more than this after it ended held late points (re-scored); one revised
# sooner was the stream's head being completed (already scored by streaming).
VIGIL_RESCAN_LATE_AFTER_SECONDS = env.int("VIGIL_RESCAN_LATE_AFTER_SECONDS", default=60)
# Points before a late range that re-prime the detector's short memory when re-scoring it.
VIGIL_RESCAN_CONTEXT_POINTS = env.int("VIGIL_RESCAN_CONTEXT_POINTS", default=120)
# Node detection reads complete minutes only (rolled up, this long ago), at most
# VIGIL_NODE_DETECT_MAX_ROWS per run, and starts this far back on a node's first run.
VIGIL_NODE_DETECT_DELAY_SECONDS = env.int("VIGIL_NODE_DETECT_DELAY_SECONDS", default=120)
VIGIL_NODE_DETECT_HISTORY_SECONDS = env.int("VIGIL_NODE_DETECT_HISTORY_SECONDS", default=86_400)
VIGIL_NODE_DETECT_MAX_ROWS = env.int("VIGIL_NODE_DETECT_MAX_ROWS", default=1440)

# Mail tells a tenant's owners and admins when one of their webhook endpoints is disabled.
# EMAIL_URL as django-environ reads it (smtp+tls://user:pass@host:587); the console by default.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="vigil@localhost")

# Alerting (alerts/; README "Alerting and webhooks").
# The public address of this Vigil, for links in notifications (externalURL, generatorURL).
VIGIL_EXTERNAL_URL = env.str("VIGIL_EXTERNAL_URL", default="http://localhost:8000")
# Every enabled rule is evaluated this often by beat (and right after ingest and detection for
# the series they touched).
VIGIL_ALERTS_EVALUATE_SECONDS = env.int("VIGIL_ALERTS_EVALUATE_SECONDS", default=30)
# Grouping of alerts no route takes (a route sets its own): Alertmanager's defaults.
VIGIL_ALERTS_GROUP_BY = env.list("VIGIL_ALERTS_GROUP_BY", default=["alertname"])
VIGIL_ALERTS_GROUP_WAIT_SECONDS = env.int("VIGIL_ALERTS_GROUP_WAIT_SECONDS", default=30)
VIGIL_ALERTS_GROUP_INTERVAL_SECONDS = env.int("VIGIL_ALERTS_GROUP_INTERVAL_SECONDS", default=300)
VIGIL_ALERTS_REPEAT_INTERVAL_SECONDS = env.int("VIGIL_ALERTS_REPEAT_INTERVAL_SECONDS", default=4 * 3600)
# Outbound webhook HTTP (alerts/outbound.py). Private, loopback and link-local targets are
# refused unless allowed (local development and tests allow them).
VIGIL_WEBHOOK_ALLOW_PRIVATE = env.bool("VIGIL_WEBHOOK_ALLOW_PRIVATE", default=False)
VIGIL_WEBHOOK_CONNECT_TIMEOUT = env.float("VIGIL_WEBHOOK_CONNECT_TIMEOUT", default=3.0)
VIGIL_WEBHOOK_TIMEOUT = env.float("VIGIL_WEBHOOK_TIMEOUT", default=10.0)
VIGIL_WEBHOOK_MAX_RESPONSE_BYTES = env.int("VIGIL_WEBHOOK_MAX_RESPONSE_BYTES", default=64 * 1024)
VIGIL_WEBHOOK_EXCERPT_BYTES = env.int("VIGIL_WEBHOOK_EXCERPT_BYTES", default=1024)
# Seconds before each retry (the first attempt is immediate), each with +-20 % jitter; after the
# last, the delivery fails (and can be replayed). A Retry-After answer is honoured up to
# VIGIL_WEBHOOK_RETRY_AFTER_MAX.
VIGIL_WEBHOOK_RETRY_SCHEDULE = [
    float(s)
    for s in env.list(
        "VIGIL_WEBHOOK_RETRY_SCHEDULE", default=["5", "30", "120", "600", "1800", "3600", "10800", "21600"]
    )
]
VIGIL_WEBHOOK_RETRY_AFTER_MAX = env.float("VIGIL_WEBHOOK_RETRY_AFTER_MAX", default=3600.0)
# An endpoint failing without a single success for this long is disabled (410 disables at once).
VIGIL_WEBHOOK_DISABLE_AFTER_SECONDS = env.int("VIGIL_WEBHOOK_DISABLE_AFTER_SECONDS", default=5 * 86400)
# The sweeper re-enqueues deliveries due this long ago and never attempted (a lost message),
# and reclaims attempts whose lease ran out (a worker killed mid-attempt). The lease is the
# total timeout plus this margin.
VIGIL_WEBHOOK_SWEEP_AFTER_SECONDS = env.int("VIGIL_WEBHOOK_SWEEP_AFTER_SECONDS", default=30)
VIGIL_WEBHOOK_LEASE_MARGIN_SECONDS = env.float("VIGIL_WEBHOOK_LEASE_MARGIN_SECONDS", default=20.0)
# After a rotation the previous secret keeps signing (both signatures sent) for this long.
VIGIL_WEBHOOK_ROTATION_SECONDS = env.int("VIGIL_WEBHOOK_ROTATION_SECONDS", default=86400)

# Model registry (mlops/). Where trained models' bytes live: "database", or "file://<directory>".
VIGIL_ARTIFACT_STORE = env.str("VIGIL_ARTIFACT_STORE", default="database")
# Training (mlops/training.py; README "Model lifecycle"). Beat trains every detected scope on this
# crontab (minute hour day-of-month month day-of-week, UTC), on the window of this many seconds
# ending at the last whole VIGIL_TRAIN_ALIGN_SECONDS. A series reads its raw points in chunks, at
# most the newest VIGIL_TRAIN_MAX_POINTS. A version still `training` after
# VIGIL_TRAIN_STALE_SECONDS lost its worker and is marked failed.
VIGIL_TRAIN_CRONTAB = env.str("VIGIL_TRAIN_CRONTAB", default="15 2 * * *")
VIGIL_TRAIN_WINDOW_SECONDS = env.int("VIGIL_TRAIN_WINDOW_SECONDS", default=7 * 86400)
VIGIL_TRAIN_ALIGN_SECONDS = env.int("VIGIL_TRAIN_ALIGN_SECONDS", default=3600)
VIGIL_TRAIN_CHUNK_POINTS = env.int("VIGIL_TRAIN_CHUNK_POINTS", default=20_000)
VIGIL_TRAIN_MAX_POINTS = env.int("VIGIL_TRAIN_MAX_POINTS", default=1_000_000)
VIGIL_TRAIN_STALE_SECONDS = env.int("VIGIL_TRAIN_STALE_SECONDS", default=3600)
# The promotion gate compares candidate and active version over the last this-many seconds of
# the training window (the holdout).
VIGIL_GATE_WINDOW_SECONDS = env.int("VIGIL_GATE_WINDOW_SECONDS", default=86400)
# Drift (mlops/drift.py): every VIGIL_DRIFT_EVERY_SECONDS each trained active model scores the
# last VIGIL_DRIFT_WINDOW_SECONDS (at least VIGIL_DRIFT_MIN_POINTS points) against its training
# reference. A feature drifts when the KS p-value is below VIGIL_DRIFT_ALPHA and the PSI or the
# Wasserstein distance (in reference robust sds) reaches its threshold. A scope retrained for
# drift is not retrained for drift again within VIGIL_DRIFT_COOLDOWN_SECONDS.
VIGIL_DRIFT_EVERY_SECONDS = env.int("VIGIL_DRIFT_EVERY_SECONDS", default=3600)
VIGIL_DRIFT_WINDOW_SECONDS = env.int("VIGIL_DRIFT_WINDOW_SECONDS", default=86400)
VIGIL_DRIFT_MIN_POINTS = env.int("VIGIL_DRIFT_MIN_POINTS", default=60)
VIGIL_DRIFT_ALPHA = env.float("VIGIL_DRIFT_ALPHA", default=0.01)
VIGIL_DRIFT_PSI = env.float("VIGIL_DRIFT_PSI", default=0.2)
VIGIL_DRIFT_WASSERSTEIN = env.float("VIGIL_DRIFT_WASSERSTEIN", default=0.5)
VIGIL_DRIFT_COOLDOWN_SECONDS = env.int("VIGIL_DRIFT_COOLDOWN_SECONDS", default=6 * 3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
