from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse


class HealthCheckMiddleware:
    """Answers `/healthz` before host validation and the HTTPS redirect.

    Load balancers and orchestrators probe by IP address over plain HTTP; neither is in
    ALLOWED_HOSTS nor HTTPS, and a liveness probe must not depend on either.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return JsonResponse({"status": "ok"})
        return self.get_response(request)
