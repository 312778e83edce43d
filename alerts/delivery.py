"""Webhook endpoints and the delivery of notifications to them (Standard Webhooks, signed).

The life of a delivery:

    notification_dispatch      one Delivery per endpoint, PENDING, due now (in the transaction
                               that writes the Notification); `delivery_attempt` published after
                               commit
    delivery_attempt           claims it (PENDING and due -> SENDING, attempts + 1, a lease in
                               `claimed_until`) by a conditional update, commits, POSTs the
                               stored body outside any transaction, then writes the result under
                               the same guard (still SENDING, same attempt number):
                                 2xx                      -> DELIVERED
                                 408, 429, 5xx, no answer -> PENDING again, due after the next
                                                             step of the retry schedule (with
                                                             jitter; Retry-After honoured), or
                                                             FAILED once this run's budget is spent
                                 410                      -> FAILED, and the endpoint is disabled
                                 other 3xx/4xx, unsafe    -> FAILED (final)
                               and one DeliveryAttempt row per try.
    deliveries_sweep           the safety net: re-publishes PENDING deliveries whose message was
                               lost, and puts SENDING ones whose lease ran out (the worker died
                               mid-attempt) back to PENDING with a "worker lost" attempt row
    delivery_replay            FAILED or DELIVERED -> PENDING with a fresh retry budget and the
                               same webhook-id, so receivers can deduplicate

Delivery is at least once: a worker killed after the receiver answered but before the result
was written sends again, with the same webhook-id. Endpoints failing without a success for
VIGIL_WEBHOOK_DISABLE_AFTER_SECONDS (or answering 410 Gone) are disabled; their owners and
admins get an email and the tenant's other endpoints an `endpoint.disabled` notification.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import random
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from standardwebhooks import Webhook

from alerts import outbound
from alerts.matchers import MatcherError, matchers_parse, matches_all
from alerts.models import Delivery, DeliveryAttempt, Notification, Severity, WebhookEndpoint
from alerts.payload import endpoint_disabled_payload_build, test_payload_build
from config.errors import Rejected
from tenants.models import Membership, Tenant

logger = logging.getLogger(__name__)

USER_AGENT = "Vigil-Webhooks/1"
# Headers Vigil sets itself (or the HTTP door does): a custom header may not replace them.
RESERVED_HEADERS = frozenset(
    {"host", "content-type", "content-length", "user-agent", "transfer-encoding", "connection"}
)
RESERVED_HEADER_PREFIX = "webhook-"  # Standard Webhooks' id, timestamp and signature
HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field name
TRANSIENT_STATUSES = frozenset({408, 429})  # and every 5xx
TRANSIENT_SEND_ERRORS = frozenset({"connect", "timeout", "tls", "protocol"})
WORKER_LOST = "no result: the worker was lost mid-attempt"
GONE_REASON = "the receiver answered 410 Gone"
# A retry's countdown is set by the worker that failed; the one that claims may run on a host
# whose clock is a little behind. Without this allowance its message would find the delivery
# not yet due, and the retry would wait for the sweeper.
CLOCK_SKEW = timedelta(milliseconds=500)
UPDATABLE_FIELDS = ("name", "url", "severities", "matchers", "event_types", "headers", "enabled")
_TEXT_MAX = 500  # the width of error and reason columns

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# --- secrets and signatures ------------------------------------------------------------------


def secret_generate() -> str:
    """A new endpoint secret in the Standard Webhooks format: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_id_generate() -> str:
    """A Standard Webhooks message id: msg_ and a ULID (48 bits of milliseconds then 80 random
    bits, in Crockford base 32: 26 characters), so ids sort by creation time. A few lines
    rather than a dependency."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    return "msg_" + "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def signature_headers(
    *, endpoint: WebhookEndpoint, webhook_id: str, timestamp: datetime, body: str, now: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt. While a rotation is in its grace period
    (`now` before previous_secret_expires_at; `now` defaults to `timestamp`) the body is signed
    with both secrets, space separated, so receivers verify with either. Pure."""
    timestamp = timestamp.astimezone(UTC)  # Webhook.sign reads the wall time as UTC
    now = now or timestamp
    keys = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and now < expires:
        keys.append(endpoint.previous_secret)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(Webhook(key).sign(webhook_id, timestamp, body) for key in keys),
    }


# --- endpoints -------------------------------------------------------------------------------


def _endpoint_validate(*, tenant_id: int, fields: Mapping[str, Any], exclude_pk: int | None = None) -> dict[str, Any]:
    """The cleaned values of the given fields (matchers normalised, lists de-duplicated), or
    Rejected listing every problem. The same rules for create and update."""
    details: list[dict[str, str]] = []
    cleaned: dict[str, Any] = {}

    def problem(field: str, code: str, message: str) -> None:
        details.append({"field": field, "code": code, "message": message})

    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            problem("name", "invalid", "The name must be 1 to 200 characters.")
        else:
            cleaned["name"] = name.strip()
    if "url" in fields:
        url = fields["url"]
        if not isinstance(url, str) or len(url) > 2000:
            problem("url", "invalid_url", "The URL must be a string of at most 2000 characters.")
        else:
            try:
                outbound.url_check(url, allow_private=settings.VIGIL_WEBHOOK_ALLOW_PRIVATE)
                cleaned["url"] = url
            except outbound.UnsafeURL as e:
                problem("url", e.code, str(e))
    for field, allowed in (("severities", Severity.values), ("event_types", Notification.Event.values)):
        if field in fields:
            values = fields[field]
            if not isinstance(values, list | tuple) or any(v not in allowed for v in values):
                problem(field, "invalid_choice", f"{field} must be a list of {', '.join(allowed)}.")
            else:
                cleaned[field] = list(dict.fromkeys(values))
    if "matchers" in fields:
        try:
            cleaned["matchers"] = [m.to_json() for m in matchers_parse(list(fields["matchers"] or []), "matchers")]
        except (MatcherError, TypeError) as e:
            details.extend(getattr(e, "details", [{"field": "matchers", "code": "invalid", "message": str(e)}]))
    if "headers" in fields:
        cleaned["headers"] = _headers_validate(fields["headers"] or {}, problem)
    if "enabled" in fields:
        if not isinstance(fields["enabled"], bool):
            problem("enabled", "invalid", "enabled must be true or false.")
        else:
            cleaned["enabled"] = fields["enabled"]

    if details:
        unsafe = any(d["field"] == "url" for d in details)
        code, message = ("unsafe_url", "The URL is refused.") if unsafe else ("invalid", "The endpoint is invalid.")
        raise Rejected(code, message, details=details)
    if "name" in cleaned:
        taken = WebhookEndpoint.objects.filter(tenant_id=tenant_id, name=cleaned["name"])
        if exclude_pk is not None:
            taken = taken.exclude(pk=exclude_pk)
        if taken.exists():
            raise _duplicate_name(cleaned["name"])
    return cleaned


def _headers_validate(headers: Any, problem: Any) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        problem("headers", "invalid", "headers must be an object of names to values.")
        return {}
    for name, value in headers.items():
        where = f"headers.{name}"
        if not isinstance(name, str) or not HTTP_TOKEN.match(name):
            problem(where, "invalid", "A header name must be an HTTP token (letters, digits, - and the like).")
        elif name.lower() in RESERVED_HEADERS or name.lower().startswith(RESERVED_HEADER_PREFIX):
            problem(where, "reserved", f"{name} is set by Vigil and cannot be replaced.")
        elif not isinstance(value, str):
            problem(where, "invalid", "A header value must be a string.")
        # CR/LF would split the header (header injection); http.client refuses other controls
        # and anything beyond Latin-1 at send time, so refuse them now rather than fail every delivery.
        elif any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F or ord(c) > 0xFF for c in value):
            problem(where, "invalid", "A header value may not contain line breaks or control characters.")
    return dict(headers)


def _duplicate_name(name: str) -> Rejected:
    return Rejected(
        "duplicate_name",
        f"An endpoint named {name!r} already exists.",
        details=[{"field": "name", "code": "duplicate_name", "message": "This name is taken."}],
        status_code=409,
    )


def endpoint_create(
    *,
    tenant: Tenant,
    name: str,
    url: str,
    severities: Iterable[str] = (),
    matchers: Iterable[Mapping[str, str]] = (),
    event_types: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    enabled: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint with a new secret; returns it and the secret (shown once).

    The URL is checked now (scheme, resolvable, public unless VIGIL_WEBHOOK_ALLOW_PRIVATE) and
    again at every send. Raises Rejected ("unsafe_url", "invalid", "duplicate_name" 409).
    Not idempotent: each call makes a new endpoint (the name is unique per tenant)."""
    cleaned = _endpoint_validate(
        tenant_id=tenant.pk,
        fields={
            "name": name,
            "url": url,
            "severities": list(severities),
            "matchers": list(matchers),
            "event_types": list(event_types),
            "headers": dict(headers or {}),
            "enabled": enabled,
        },
    )
    secret = secret_generate()
    disabled_at = None if enabled else timezone.now()
    try:
        with transaction.atomic():
            endpoint = WebhookEndpoint.objects.create(tenant=tenant, secret=secret, disabled_at=disabled_at, **cleaned)
    except IntegrityError:  # the same name created concurrently
        raise _duplicate_name(cleaned["name"]) from None
    return endpoint, secret


def endpoint_update(*, endpoint: WebhookEndpoint, **changes: Any) -> WebhookEndpoint:
    """Change some of name, url, severities, matchers, event_types, headers, enabled (validated
    like endpoint_create). Enabling clears the disabled state and the failure run; disabling
    by hand fails the endpoint's pending deliveries (replayable) without telling anyone.
    Nothing is written when nothing changes."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise TypeError(f"endpoint_update() got unknown fields {sorted(unknown)}; known: {UPDATABLE_FIELDS}")
    cleaned = _endpoint_validate(tenant_id=endpoint.tenant_id, fields=changes, exclude_pk=endpoint.pk)
    changed = {field: value for field, value in cleaned.items() if getattr(endpoint, field) != value}
    if not changed:
        return endpoint
    now = timezone.now()
    if changed.get("enabled") is True:
        changed |= {"disabled_at": None, "disabled_reason": "", "failing_since": None}
    elif changed.get("enabled") is False:
        changed |= {"disabled_at": now, "disabled_reason": "disabled by a user"}
    try:
        with transaction.atomic():
            for field, value in changed.items():
                setattr(endpoint, field, value)
            endpoint.save(update_fields=[*changed, "updated_at"])
            if changed.get("enabled") is False:
                _pending_fail(endpoint=endpoint, reason="not sent: the endpoint was disabled by a user")
    except IntegrityError:
        endpoint.refresh_from_db()
        raise _duplicate_name(cleaned["name"]) from None
    return endpoint


def endpoint_secret_rotate(*, endpoint: WebhookEndpoint, now: datetime | None = None) -> str:
    """Give the endpoint a new secret and return it (shown once). The old one keeps signing,
    next to the new one, for VIGIL_WEBHOOK_ROTATION_SECONDS; a second rotation within that time
    drops the oldest. Not idempotent: every call makes a new secret."""
    now = now or timezone.now()
    secret = secret_generate()
    with transaction.atomic():
        current = WebhookEndpoint.objects.select_for_update(no_key=True).get(pk=endpoint.pk)
        current.previous_secret = current.secret
        current.previous_secret_expires_at = now + timedelta(seconds=settings.VIGIL_WEBHOOK_ROTATION_SECONDS)
        current.secret = secret
        current.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    endpoint.secret, endpoint.previous_secret = current.secret, current.previous_secret
    endpoint.previous_secret_expires_at = current.previous_secret_expires_at
    return secret


def endpoint_disable(*, endpoint: WebhookEndpoint, reason: str, now: datetime | None = None) -> bool:
    """Disable an enabled endpoint; returns False (and does nothing) if it already was.

    Its pending deliveries fail with `reason` (they stay replayable). After commit the tenant's
    owners and admins are emailed, and an `endpoint.disabled` notification goes to the tenant's
    other enabled endpoints that accept that event. Idempotent: a conditional update on `enabled`."""
    now = now or timezone.now()
    reason = reason[:_TEXT_MAX]
    with transaction.atomic():
        disabled = WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True).update(
            enabled=False, disabled_at=now, disabled_reason=reason, updated_at=now
        )
        if not disabled:
            return False
        endpoint.enabled, endpoint.disabled_at, endpoint.disabled_reason = False, now, reason
        _pending_fail(endpoint=endpoint, reason=f"not sent: the endpoint was disabled ({reason})")
        others = [
            other
            for other in WebhookEndpoint.objects.filter(tenant_id=endpoint.tenant_id, enabled=True).select_related(
                "tenant"
            )
            if endpoint_accepts(other, event=Notification.Event.ENDPOINT_DISABLED, severity=None, labels={})
        ]
        if others:
            tenant = others[0].tenant
            notification = Notification.objects.create(
                tenant=tenant,
                event=Notification.Event.ENDPOINT_DISABLED,
                body=endpoint_disabled_payload_build(
                    receiver="vigil",
                    external_url=settings.VIGIL_EXTERNAL_URL,
                    tenant=tenant.slug,
                    endpoint_id=endpoint.pk,
                    endpoint_name=endpoint.name,
                    reason=reason,
                    disabled_at=now,
                ),
            )
            notification_dispatch(notification=notification, endpoints=others)
        transaction.on_commit(lambda: _owners_email(endpoint=endpoint, reason=reason))
    logger.warning("webhook endpoint %s (%s) disabled: %s", endpoint.pk, endpoint.name, reason)
    return True


def _pending_fail(*, endpoint: WebhookEndpoint, reason: str) -> int:
    return Delivery.objects.filter(endpoint=endpoint, status=Delivery.Status.PENDING).update(
        status=Delivery.Status.FAILED, next_attempt_at=None, last_error=reason[:_TEXT_MAX]
    )


def _owners_email(*, endpoint: WebhookEndpoint, reason: str) -> None:
    """Tell the tenant's owners and admins. A mail failure is logged, never raised: the endpoint
    is disabled either way, and the API shows why."""
    recipients = sorted(
        set(
            Membership.objects.filter(
                tenant_id=endpoint.tenant_id,
                role__in=[Membership.Role.OWNER, Membership.Role.ADMIN],
                user__is_active=True,
            )
            .exclude(user__email="")
            .values_list("user__email", flat=True)
        )
    )
    if not recipients:
        return
    try:
        send_mail(
            subject=f"Vigil: webhook endpoint {endpoint.name!r} was disabled",
            message=(
                # Not the URL: receivers' URLs often carry a token.
                f"Vigil stopped sending webhooks to the endpoint {endpoint.name!r}: {reason}.\n\n"
                "Its pending deliveries were marked failed. Once the receiver works again, re-enable the "
                "endpoint and replay the failed deliveries; they keep their webhook-id, so the receiver can "
                "tell a replay from a new message.\n"
            ),
            from_email=None,
            recipient_list=recipients,
        )
    except Exception:
        logger.warning("could not email the owners of endpoint %s", endpoint.pk, exc_info=True)


def endpoint_accepts(endpoint: WebhookEndpoint, *, event: str, severity: str | None, labels: Mapping[str, str]) -> bool:
    """Whether an enabled endpoint wants this event: its event_types, severities and matchers
    all accept it (an empty filter accepts everything). `severity` None means the event is not
    about an alert (endpoint.disabled): only event_types applies. Test events ignore the filters."""
    if not endpoint.enabled:
        return False
    if event == Notification.Event.TEST:
        return True
    if endpoint.event_types and event not in endpoint.event_types:
        return False
    if severity is None:
        return True
    if endpoint.severities and severity not in endpoint.severities:
        return False
    return matches_all(matchers_parse(endpoint.matchers), labels)


def endpoint_send_test(*, endpoint: WebhookEndpoint) -> Delivery:
    """Send a test notification to this endpoint only, whatever its filters; returns the
    delivery. Refuses a disabled endpoint (Rejected "endpoint_disabled", 409). Each call sends
    a new message."""
    if not endpoint.enabled:
        raise Rejected("endpoint_disabled", "The endpoint is disabled; enable it first.", status_code=409)
    with transaction.atomic():
        notification = Notification.objects.create(
            tenant_id=endpoint.tenant_id,
            event=Notification.Event.TEST,
            body=test_payload_build(receiver=endpoint.name, external_url=settings.VIGIL_EXTERNAL_URL),
        )
        [delivery] = notification_dispatch(notification=notification, endpoints=[endpoint])
    return delivery


# --- deliveries ------------------------------------------------------------------------------


def notification_dispatch(*, notification: Notification, endpoints: Iterable[WebhookEndpoint]) -> list[Delivery]:
    """Create one PENDING delivery, due now, per endpoint, and after commit publish an attempt
    for each; returns the deliveries created. Call it in the transaction that writes the
    notification. Idempotent: an endpoint that already has a delivery of this notification
    gets nothing new (unique constraint). A failed publish is logged; the sweeper re-publishes."""
    now = timezone.now()
    rows = [
        Delivery(
            notification=notification,
            endpoint=endpoint,
            tenant_id=notification.tenant_id,
            webhook_id=webhook_id_generate(),
            next_attempt_at=now,
        )
        for endpoint in endpoints
    ]
    if not rows:
        return []
    with transaction.atomic():
        # ON CONFLICT DO NOTHING returns no ids: read back the rows carrying our fresh webhook ids.
        Delivery.objects.bulk_create(rows, ignore_conflicts=True)
        created = list(Delivery.objects.filter(webhook_id__in=[row.webhook_id for row in rows]).order_by("pk"))
        ids = [delivery.pk for delivery in created]
        transaction.on_commit(lambda: _publish(ids))
    return created


def _publish(delivery_ids: Iterable[int], countdown: float | None = None) -> None:
    from alerts import tasks  # tasks imports this module

    options: dict[str, Any] = {} if countdown is None else {"countdown": countdown}
    for delivery_id in delivery_ids:
        try:
            tasks.delivery_attempt.apply_async(args=(delivery_id,), **options)
        except Exception:  # the broker is down; the delivery stays due and the sweeper re-publishes
            logger.warning("could not publish delivery %s; the sweeper will retry", delivery_id, exc_info=True)


@dataclass(frozen=True)
class _Result:
    outcome: str  # DeliveryAttempt.Outcome
    status_code: int | None = None
    error: str = ""
    excerpt: str = ""
    retry_after: float | None = None
    gone: bool = False
    sent: bool = True  # False: refused before any HTTP (the endpoint is disabled)


def delivery_attempt(*, delivery_id: int, now: datetime | None = None) -> str | None:
    """One HTTP attempt of one delivery, if it is PENDING and due at `now` (give or take
    CLOCK_SKEW); returns the outcome
    ("delivered", "retry", "failed") or None when there was nothing to do (not due, taken by
    another worker, done, or its lease was reclaimed while we were sending).

    Side effects: the claim (attempts + 1, a lease), one POST of the stored body, one
    DeliveryAttempt, the delivery's new state, the endpoint's failure run (and disabling it);
    a retry is published after commit with its delay as countdown. Idempotent by the claim: a
    redelivered message finds nothing due. No transaction is open during the HTTP exchange."""
    started = now or timezone.now()
    lease = timedelta(seconds=settings.VIGIL_WEBHOOK_TIMEOUT + settings.VIGIL_WEBHOOK_LEASE_MARGIN_SECONDS)
    claimed = Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.PENDING, next_attempt_at__lte=started + CLOCK_SKEW
    ).update(
        status=Delivery.Status.SENDING, attempts=F("attempts") + 1, claimed_at=started, claimed_until=started + lease
    )
    if not claimed:
        return None
    delivery = Delivery.objects.select_related("endpoint", "notification").get(pk=delivery_id)
    endpoint = delivery.endpoint
    number = delivery.attempts

    clock = time.monotonic()
    if endpoint.enabled:
        result = _send(delivery, started)
    else:
        reason = endpoint.disabled_reason or "disabled"
        result = _Result(
            DeliveryAttempt.Outcome.FAILED, error=f"not sent: the endpoint is disabled ({reason})", sent=False
        )
    duration_ms = (time.monotonic() - clock) * 1000
    finished = started + timedelta(milliseconds=duration_ms)

    outcome, delay, error = result.outcome, None, result.error
    disable_reason = _disable_reason(endpoint=endpoint, result=result, at=finished)
    if disable_reason is not None and not result.gone:
        error += f"; the endpoint is disabled ({disable_reason})"
    elif outcome == DeliveryAttempt.Outcome.RETRY:
        delay = _retry_delay(attempt_in_run=number - delivery.run_start_attempts, retry_after=result.retry_after)
    if outcome == DeliveryAttempt.Outcome.RETRY and delay is None:
        outcome = DeliveryAttempt.Outcome.FAILED  # the budget is spent, or the endpoint is being disabled
    fields: dict[str, Any] = {
        "claimed_at": None,
        "claimed_until": None,
        "last_status_code": result.status_code,
        "last_error": error[:_TEXT_MAX],
        "next_attempt_at": None,
    }
    if outcome == DeliveryAttempt.Outcome.DELIVERED:
        fields |= {"status": Delivery.Status.DELIVERED, "delivered_at": finished}
    elif outcome == DeliveryAttempt.Outcome.FAILED:
        fields["status"] = Delivery.Status.FAILED
    else:
        assert delay is not None
        fields |= {"status": Delivery.Status.PENDING, "next_attempt_at": finished + timedelta(seconds=delay)}

    with transaction.atomic():
        written = Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.SENDING, attempts=number).update(
            **fields
        )
        if not written:
            # The sweeper reclaimed the lease (and recorded this attempt as lost); a later
            # attempt owns the delivery now.
            logger.info("delivery %s attempt %s finished after its lease was reclaimed", delivery_id, number)
            return None
        DeliveryAttempt.objects.create(
            delivery_id=delivery_id,
            number=number,
            started_at=started,
            duration_ms=duration_ms,
            status_code=result.status_code,
            error=error[:_TEXT_MAX],
            response_excerpt=result.excerpt,
            outcome=outcome,
        )
        if result.sent:
            _failure_run(endpoint=endpoint, ok=outcome == DeliveryAttempt.Outcome.DELIVERED, at=finished)
        if disable_reason is not None:
            endpoint_disable(endpoint=endpoint, reason=disable_reason, now=finished)
        if delay is not None:
            # Long waits are left to the sweeper: a countdown message is held unacknowledged by
            # the worker, and Redis hands it to another worker after the visibility timeout.
            visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
            if delay < float(visibility) / 2:  # type: ignore[arg-type]
                transaction.on_commit(lambda: _publish([delivery_id], countdown=delay))
    return str(outcome)


def _send(delivery: Delivery, started: datetime) -> _Result:
    """POST the stored body and classify what happened (never raises for the receiver's sake)."""
    endpoint, body = delivery.endpoint, delivery.notification.body
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **endpoint.headers,
        **signature_headers(endpoint=endpoint, webhook_id=delivery.webhook_id, timestamp=started, body=body),
    }
    try:
        response = outbound.post(
            endpoint.url,
            body=body.encode(),
            headers=headers,
            connect_timeout=settings.VIGIL_WEBHOOK_CONNECT_TIMEOUT,
            total_timeout=settings.VIGIL_WEBHOOK_TIMEOUT,
            max_body=settings.VIGIL_WEBHOOK_MAX_RESPONSE_BYTES,
            allow_private=settings.VIGIL_WEBHOOK_ALLOW_PRIVATE,
        )
    except outbound.SendError as e:
        transient = e.kind in TRANSIENT_SEND_ERRORS
        outcome = DeliveryAttempt.Outcome.RETRY if transient else DeliveryAttempt.Outcome.FAILED
        return _Result(outcome, error=f"{e.kind}: {e}")

    status = response.status
    # PostgreSQL text cannot hold NUL characters.
    excerpt = (
        response.body[: settings.VIGIL_WEBHOOK_EXCERPT_BYTES]
        .decode("utf-8", errors="replace")
        .replace("\x00", "\ufffd")
    )
    if 200 <= status < 300:
        return _Result(DeliveryAttempt.Outcome.DELIVERED, status_code=status, excerpt=excerpt)
    if status in TRANSIENT_STATUSES or 500 <= status < 600:
        return _Result(
            DeliveryAttempt.Outcome.RETRY,
            status_code=status,
            error=f"HTTP {status}",
            excerpt=excerpt,
            retry_after=_retry_after(response.headers.get("retry-after"), now=started),
        )
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        error = f"HTTP {status}: redirects are not followed (Location: {location or 'none'})"
    elif status == 410:
        error = f"HTTP 410: {GONE_REASON}, the endpoint is disabled"
    else:
        error = f"HTTP {status}"
    return _Result(DeliveryAttempt.Outcome.FAILED, status_code=status, error=error, excerpt=excerpt, gone=status == 410)


def _retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _retry_delay(*, attempt_in_run: int, retry_after: float | None) -> float | None:
    """Seconds before the next attempt (schedule step with +-20 % jitter, raised to a
    Retry-After capped at VIGIL_WEBHOOK_RETRY_AFTER_MAX), or None when the budget is spent."""
    schedule = settings.VIGIL_WEBHOOK_RETRY_SCHEDULE
    if attempt_in_run > len(schedule):
        return None
    delay = schedule[attempt_in_run - 1] * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.VIGIL_WEBHOOK_RETRY_AFTER_MAX))
    return delay


def _disable_reason(*, endpoint: WebhookEndpoint, result: _Result, at: datetime) -> str | None:
    """Why this result disables the endpoint, if it does: a 410, or a failure extending a run of
    failures (no success since `failing_since`) past VIGIL_WEBHOOK_DISABLE_AFTER_SECONDS."""
    if result.gone:
        return GONE_REASON
    if not result.sent or result.outcome == DeliveryAttempt.Outcome.DELIVERED or endpoint.failing_since is None:
        return None
    failing = at - endpoint.failing_since
    if failing <= timedelta(seconds=settings.VIGIL_WEBHOOK_DISABLE_AFTER_SECONDS):
        return None
    return f"no successful delivery for {failing.total_seconds() / 3600:.1f} hours"


def _failure_run(*, endpoint: WebhookEndpoint, ok: bool, at: datetime) -> None:
    """A success ends the endpoint's run of failures; a failure starts one if none is running."""
    if ok and endpoint.failing_since is not None:
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=None)
    elif not ok and endpoint.failing_since is None:
        WebhookEndpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=True).update(failing_since=at)


def deliveries_sweep(*, now: datetime | None = None, limit: int = 1000) -> int:
    """The safety net; returns how many deliveries it re-published.

    (a) PENDING deliveries due for VIGIL_WEBHOOK_SWEEP_AFTER_SECONDS and still not attempted
    (their message was lost) are published again. (b) SENDING deliveries whose lease ran out
    (the worker died mid-attempt) go back to PENDING, due now, with a "worker lost" attempt row,
    and are published; FAILED instead if that was the last attempt of the run's budget.
    Idempotent: the claim makes duplicate messages harmless, and (b) is a conditional update."""
    now = now or timezone.now()
    due_before = now - timedelta(seconds=settings.VIGIL_WEBHOOK_SWEEP_AFTER_SECONDS)
    lost = list(
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=due_before)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    expired = Delivery.objects.filter(status=Delivery.Status.SENDING, claimed_until__lt=now).order_by("claimed_until")
    reclaimed = []
    max_attempts = len(settings.VIGIL_WEBHOOK_RETRY_SCHEDULE) + 1
    for delivery in expired[:limit]:
        spent = delivery.attempts - delivery.run_start_attempts >= max_attempts
        status = Delivery.Status.FAILED if spent else Delivery.Status.PENDING
        with transaction.atomic():
            taken = Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.SENDING, attempts=delivery.attempts)
            if not taken.update(
                status=status,
                next_attempt_at=None if spent else now,
                claimed_at=None,
                claimed_until=None,
                last_status_code=None,
                last_error=WORKER_LOST,
            ):
                continue  # its worker finished after all
            started = delivery.claimed_at or delivery.claimed_until or now
            DeliveryAttempt.objects.create(
                delivery_id=delivery.pk,
                number=delivery.attempts,
                started_at=started,
                duration_ms=max(0.0, (now - started).total_seconds() * 1000),
                error=WORKER_LOST,
                outcome=DeliveryAttempt.Outcome.FAILED if spent else DeliveryAttempt.Outcome.RETRY,
            )
        if not spent:
            reclaimed.append(delivery.pk)
    ids = lost + reclaimed
    transaction.on_commit(lambda: _publish(ids))
    return len(ids)


def delivery_replay(*, delivery: Delivery) -> Delivery:
    """Send a FAILED (or DELIVERED) delivery again: PENDING, due now, a fresh retry budget, the
    same webhook-id; published after commit. Rejected 409 "not_replayable" while it is pending
    or sending, "endpoint_disabled" when its endpoint is disabled. Not idempotent: each call on
    a finished delivery starts a new run."""
    with transaction.atomic():
        # Locks the endpoint row too: an endpoint_disable running meanwhile waits for this commit,
        # then fails the replayed delivery with its other pending ones.
        current = Delivery.objects.select_for_update().select_related("endpoint").get(pk=delivery.pk)
        if current.status in (Delivery.Status.PENDING, Delivery.Status.SENDING):
            raise Rejected(
                "not_replayable", f"The delivery is {current.status}; wait for it to finish.", status_code=409
            )
        if not current.endpoint.enabled:
            raise Rejected("endpoint_disabled", "The endpoint is disabled; enable it first.", status_code=409)
        current.status = Delivery.Status.PENDING
        current.next_attempt_at = timezone.now()
        current.run_start_attempts = current.attempts
        current.delivered_at = None
        current.save(update_fields=["status", "next_attempt_at", "run_start_attempts", "delivered_at"])
        transaction.on_commit(lambda: _publish([current.pk]))
    return current
