"""The Celery contract: named queues, explicit routing, limits that keep redelivery safe."""

from __future__ import annotations

from django.conf import settings

from config.celery_app import app


def test_every_task_is_routed_to_a_named_queue() -> None:
    app.loader.import_default_modules()
    vigil_tasks = {name for name in app.tasks if name.split(".")[0] in {"tenants", "analytics", "mlops", "alerts"}}
    assert vigil_tasks, "no Vigil tasks registered"
    assert vigil_tasks <= set(settings.CELERY_TASK_ROUTES)
    assert {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} <= set(settings.VIGIL_QUEUES)


def test_a_message_is_never_redelivered_while_its_task_may_still_run() -> None:
    assert app.conf.task_soft_time_limit < app.conf.task_time_limit
    assert app.conf.broker_transport_options["visibility_timeout"] > app.conf.task_time_limit


def test_tasks_speak_json_only_and_reject_on_worker_loss() -> None:
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1


def test_acks_late_only_on_tasks_declared_idempotent() -> None:
    app.loader.import_default_modules()
    task = app.tasks["analytics.tasks.ingest_batch_process"]
    assert task.acks_late is True
    assert task.max_retries == 5 and task.retry_jitter and task.retry_backoff


def test_detection_tasks_run_on_the_detect_queue_and_are_handed_back_if_a_worker_dies() -> None:
    app.loader.import_default_modules()
    names = ["series_detect", "series_rescore", "anomalies_rescan", "nodes_detect", "node_detect"]
    for name in (f"analytics.tasks.{n}" for n in names):
        task = app.tasks[name]
        assert settings.CELERY_TASK_ROUTES[name] == {"queue": "detect"}
        assert task.acks_late is True and task.ignore_result is True
        assert task.soft_time_limit < task.time_limit <= app.conf.task_time_limit
        assert task.max_retries and task.retry_jitter
