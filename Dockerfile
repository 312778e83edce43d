# Vigil: one image for web (gunicorn), worker, beat, flower and the one-shot migrate job.
# docker-compose.yml shows how the processes are wired together.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A home of its own for the unprivileged user: gunicorn puts its control socket under
# $HOME/.gunicorn, and the application code itself stays root-owned and read-only.
RUN groupadd --system --gid 10001 vigil \
    && useradd --system --uid 10001 --gid vigil --create-home --home-dir /home/vigil --shell /usr/sbin/nologin vigil

WORKDIR /app

# Dependencies before the code, so an edit to the code reuses this layer. Every pin has a
# manylinux wheel (psycopg2-binary bundles libpq, scikit-learn its OpenMP): no compiler needed.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Static files are baked into the image and served by whitenoise. The production settings
# refuse to load without their variables, so collectstatic gets build-only values here:
# none of them reaches the running container, and nothing connects to them.
RUN DJANGO_SETTINGS_MODULE=config.settings.production \
    DJANGO_SECRET_KEY=build-only-collectstatic-not-a-secret \
    DJANGO_ALLOWED_HOSTS=build.invalid \
    DATABASE_URL=sqlite:////tmp/build-only.sqlite3 \
    CELERY_BROKER_URL=memory:// \
    python manage.py collectstatic --no-input --verbosity 0

ENV DJANGO_SETTINGS_MODULE=config.settings.production \
    WEB_CONCURRENCY=2

USER vigil
EXPOSE 8000

# gunicorn reads its worker count from WEB_CONCURRENCY. The heartbeat file goes to
# /dev/shm: on a disk-backed /tmp the heartbeat's fchmod can stall a worker.
CMD ["gunicorn", "--config", "python:config.gunicorn"]
