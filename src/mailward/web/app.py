"""The quarantine web page: Starlette routes over the same service as `mailward quarantine`.

Analysts log in (``/login``) and review the quarantine (``/``, ``/m/<id>``);
recipients come through a signed digest link (``/r/<token>``) and see only
their own held spam. Nothing from a message is ever rendered: every string
is neutralised (control and bidi characters made visible) and HTML-escaped by
the templates (autoescape on), text parts are shown as source in ``<pre>``,
and the Content-Security-Policy allows no script at all and no image or
style from anywhere but this server. Every page is ``no-store``.

Security controls, each in one place: sessions and lockout in
:mod:`.accounts`; CSRF (a per-session token in every form, a pre-login token
for the login form, the link's own HMAC-derived token for recipients) in
:func:`_check_csrf`; headers in :class:`SecurityHeaders`; errors become a
page with a reference ID that is logged with the details (:func:`_failure`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..envelope import Direction
from ..errors import MailwardError
from ..evidence import Label
from ..quarantine.links import RecipientLink, verify_link
from ..quarantine.records import ListFilter, Removal, Status, check_id
from ..quarantine.release import ReleaseOutcome
from ..quarantine.render import when
from ..review.service import QuarantineService, block_sender, list_sender, web_actor
from ..textsafe import neutralise
from .accounts import MAX_PASSWORD, AccountStore, Login, Session

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "mailward_session"
LOGIN_COOKIE = "mailward_login"
CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)

# Outcomes shown after an action's redirect: the page shows only these fixed texts, never a query string.
NOTICES = {
    "released": "Released to the original recipients.",
    "release-failed": "The relay did not accept the message; it stays in quarantine.",
    "already-released": "It was already released.",
    "in-progress": "Someone else is releasing it right now.",
    "needs-force": "It has a malware verdict: tick “force” to release it anyway.",
    "no-held-copy": "Postfix's held copy is gone (released or deleted there?): not released, so nobody gets it "
    "twice. Ask your mail administrator.",
    "not-found": "No such message (any more).",
    "shared": "This message was also addressed to others: ask your mail administrator to release it.",
    "deleted": "Deleted.",
    "labelled": "Label recorded for training.",
    "blocked": "Sender blocked.",
    "already-blocked": "That sender was already blocked.",
    "allowed": "Sender allowed: its mail skips the spam checks (never the malware checks).",
    "already-listed": "That sender already has an allow or block entry (an analyst can change it).",
    "no-sender": "The message has no envelope sender to block.",
    "odd-sender": "Its envelope sender is not an address a list entry can match: nothing was changed.",
}
_RELEASE_NOTICE = {
    ReleaseOutcome.RELEASED: "released",
    ReleaseOutcome.FAILED: "release-failed",
    ReleaseOutcome.ALREADY_RELEASED: "already-released",
    ReleaseOutcome.IN_PROGRESS: "in-progress",
    ReleaseOutcome.NEEDS_FORCE: "needs-force",
    ReleaseOutcome.NO_HELD_COPY: "no-held-copy",
    ReleaseOutcome.NOT_FOUND: "not-found",
}


class SecurityHeaders:
    """Adds the security headers (and ``no-store``) to every response, error pages included."""

    def __init__(self, app: ASGIApp, secure: bool):
        self.app = app
        self.extra = HEADERS + ((b"strict-transport-security", b"max-age=31536000"),) if secure else HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"server"]
                headers += list(self.extra)
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass(frozen=True)
class Parts:
    """What the application works on; built by :func:`create_app` or handed in by a test."""

    settings: Settings
    service: QuarantineService
    accounts: AccountStore
    link_key: bytes
    clock: Callable[[], float] = time.time


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["safe_text"] = lambda v: neutralise(str(v))
    env.filters["safe_block"] = lambda v: neutralise(str(v), multiline=True)
    env.filters["when"] = when
    return env


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _reference() -> str:
    return "WEB-" + secrets.token_hex(6).upper()


def create_app(parts: Parts) -> ASGIApp:
    """The ASGI application: Starlette routes wrapped in the security headers."""
    templates = Jinja2Templates(env=_environment())
    settings = parts.settings
    service = parts.service
    accounts = parts.accounts

    def page(request: Request, name: str, code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=code)

    def failure(request: Request, status: int, text: str) -> Response:
        reference = _reference()
        log.warning("web %s %s: %s %s (reference %s)", request.method, request.url.path, status, text, reference)
        return page(request, "error.html", status, title=text, reference=reference, session=None)

    def analyst(request: Request) -> Session | None:
        return accounts.session(request.cookies.get(SESSION_COOKIE, ""))

    def to_login(request: Request) -> Response:
        """Back to the login page; saying why when the session cookie was there but the session is gone."""
        expired = bool(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login?problem=expired" if expired else "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def form_of(request: Request, session: Session | None, expected: str = "") -> dict[str, str] | None:
        """The submitted form if its CSRF token is the session's (or ``expected``), else None."""
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        wanted = session.csrf if session is not None else expected
        given = values.get("csrf", "")
        return values if wanted and hmac.compare_digest(given.encode(), wanted.encode()) else None

    # -- analysts' login -------------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = page(
            request, "login.html", csrf=token, problem=request.query_params.get("problem", ""), session=None
        )
        _cookie(response, LOGIN_COOKIE, token, settings.web.secure_cookies, max_age=900)
        return response

    async def login(request: Request) -> Response:
        values = await form_of(request, None, request.cookies.get(LOGIN_COOKIE, ""))
        if values is None:
            return failure(request, 403, "The form expired: reload the login page")
        # one character over the limit: a password too long to have been set never matches
        name, password = values.get("name", "")[:64], values.get("password", "")[: MAX_PASSWORD + 1]
        outcome, session = await run_in_threadpool(accounts.login, name, password, _client(request))
        if outcome is not Login.OK or session is None:
            problem = "locked" if outcome is Login.LOCKED else "refused"
            return RedirectResponse(f"/login?problem={problem}", status_code=303)
        response = RedirectResponse("/", status_code=303)
        _cookie(response, SESSION_COOKIE, session.token, settings.web.secure_cookies)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        session = analyst(request)
        if session is None:
            return to_login(request)
        if await form_of(request, session) is None:
            return failure(request, 403, "The form expired or came from another site")
        await run_in_threadpool(accounts.logout, session, _client(request))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- analysts' quarantine ----------------------------------------------------------------------

    async def listing(request: Request) -> Response:
        session = analyst(request)
        if session is None:
            return to_login(request)
        q = request.query_params
        status = q.get("status", "held")
        direction = q.get("direction", "")
        filters = ListFilter(
            direction=Direction(direction) if direction in {d.value for d in Direction} else None,
            status=Status(status) if status in {s.value for s in Status} else None,
            reason=q.get("reason", "")[:64],
            sender=q.get("sender", "")[:256],
            recipient=q.get("recipient", "")[:256],
            subject=q.get("subject", "")[:256],
            limit=500,
        )
        records = await run_in_threadpool(service.find, filters)
        return page(
            request,
            "list.html",
            session=session,
            records=records,
            q=q,
            status=status,
            direction=direction,
            statuses=[s.value for s in Status],
            directions=[d.value for d in Direction],
        )

    async def message(request: Request) -> Response:
        session = analyst(request)
        if session is None:
            return to_login(request)
        qid = request.path_params["qid"]
        if not _valid_id(qid):
            return failure(request, 404, "No such message")
        seen = await run_in_threadpool(service.inspect, qid, web_actor(session.account, _client(request)))
        if seen is None:
            return failure(request, 404, "No such message")
        notice = NOTICES.get(request.query_params.get("done", ""), "")
        return page(
            request,
            "message.html",
            session=session,
            seen=seen,
            record=seen.record,
            view=seen.view,
            notice=notice,
            labels=[lb.value for lb in Label],
        )

    async def act(request: Request) -> Response:
        session = analyst(request)
        if session is None:
            return to_login(request)
        values = await form_of(request, session)
        if values is None:
            return failure(request, 403, "The form expired or came from another site")
        qid, verb = request.path_params["qid"], request.path_params["verb"]
        if not _valid_id(qid):
            return failure(request, 404, "No such message")
        actor = web_actor(session.account, _client(request))
        if verb == "release":
            result = await run_in_threadpool(service.release, qid, actor, values.get("force") == "yes")
            done = _RELEASE_NOTICE[result.outcome]
        elif verb == "delete":
            removal = await run_in_threadpool(service.delete, qid, actor)
            if removal is Removal.DELETED:
                return RedirectResponse("/?done=deleted", status_code=303)
            done = "not-found" if removal is Removal.NOT_FOUND else "in-progress"
        elif verb == "label":
            try:
                label = Label(values.get("label", ""))
            except ValueError:
                return failure(request, 400, "Unknown label")
            done = "labelled" if await run_in_threadpool(service.label, qid, label, actor) else "not-found"
        elif verb in ("block-sender", "allow-sender"):
            record = await run_in_threadpool(service.get, qid)
            if record is None:
                done = "not-found"
            elif not record.envelope.mail_from:
                done = "no-sender"
            else:
                sender, reason = record.envelope.mail_from, f"from the web page, message {qid}"
                try:
                    if verb == "block-sender":
                        created = await run_in_threadpool(block_sender, settings, sender, reason, actor)
                        done = "blocked" if created else "already-blocked"
                    else:
                        created = await run_in_threadpool(list_sender, settings, True, sender, "", reason, actor)
                        done = "allowed" if created else "already-listed"
                except ValueError:  # a sender no list entry could match (spaces, control characters...)
                    done = "odd-sender"
                else:
                    await run_in_threadpool(service.record_event, qid, verb, actor, sender)
        else:
            return failure(request, 404, "No such action")
        return RedirectResponse(f"/m/{qid}?done={done}", status_code=303)

    # -- recipients, through a digest link ---------------------------------------------------------

    def link_of(request: Request) -> tuple[str, RecipientLink] | None:
        token = request.path_params["token"]
        try:
            link = verify_link(parts.link_key, token, parts.clock())
        except MailwardError:
            return None
        return (token, link) if link is not None else None

    def link_csrf(token: str) -> str:
        return hmac.new(parts.link_key, b"csrf " + token.encode(), hashlib.sha256).hexdigest()

    async def recipient_page(request: Request) -> Response:
        found = link_of(request)
        if found is None:
            return failure(request, 403, "This link is not valid or has expired")
        token, link = found
        records = await run_in_threadpool(
            service.recipient_records, link.recipient, float(link.issued_at), link.quarantine_id
        )
        notice = NOTICES.get(request.query_params.get("done", ""), "")
        return page(
            request,
            "recipient.html",
            session=None,
            link=link,
            records=records,
            token=token,
            csrf=link_csrf(token),
            notice=notice,
        )

    async def recipient_form(request: Request) -> tuple[str, RecipientLink, dict[str, str]] | Response:
        """A recipient's action: a valid link and a form posted from its own page, or the refusal."""
        found = link_of(request)
        if found is None:
            return failure(request, 403, "This link is not valid or has expired")
        token, link = found
        values = await form_of(request, None, link_csrf(token))
        if values is None:
            return failure(request, 403, "The form expired or came from another site")
        return token, link, values

    async def recipient_release(request: Request) -> Response:
        posted = await recipient_form(request)
        if isinstance(posted, Response):
            return posted
        token, link, values = posted
        qid = values.get("id", "")
        if not _valid_id(qid):
            return failure(request, 404, "No such message")
        if link.quarantine_id and qid != link.quarantine_id:
            return failure(request, 403, "This link is for another message")
        actor = web_actor(f"recipient {link.recipient}", _client(request))
        try:
            result = await run_in_threadpool(
                service.release_for_recipient, qid, link.recipient, float(link.issued_at), actor
            )
            done = _RELEASE_NOTICE[result.outcome]
        except MailwardError:
            done = "shared"
        return RedirectResponse(f"/r/{token}?done={done}", status_code=303)

    async def recipient_sender(request: Request) -> Response:
        """A recipient allows or blocks the sender of one of their held messages, for themselves only."""
        posted = await recipient_form(request)
        if isinstance(posted, Response):
            return posted
        token, link, values = posted
        qid, choice = values.get("id", ""), values.get("choice", "")
        if not _valid_id(qid) or choice not in ("allow", "block"):
            return failure(request, 404, "No such message")
        mine = await run_in_threadpool(
            service.recipient_records, link.recipient, float(link.issued_at), link.quarantine_id
        )
        record = next((r for r in mine if r.id == qid), None)
        if record is None or not record.envelope.mail_from:
            return RedirectResponse(f"/r/{token}?done=not-found", status_code=303)
        actor = web_actor(f"recipient {link.recipient}", _client(request))
        created = await run_in_threadpool(
            list_sender,
            settings,
            choice == "allow",
            record.envelope.mail_from,
            link.recipient,
            f"by the recipient from their digest, message {qid}",
            actor,
        )
        await run_in_threadpool(
            service.record_event, qid, f"{choice}-sender", actor, f"{record.envelope.mail_from} for {link.recipient}"
        )
        done = ("allowed" if choice == "allow" else "blocked") if created else "already-listed"
        return RedirectResponse(f"/r/{token}?done={done}", status_code=303)

    # -- errors ------------------------------------------------------------------------------------

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        text = {404: "Not found", 405: "Method not allowed"}.get(status, "Request refused")
        return failure(request, status, text)

    async def server_error(request: Request, exc: Exception) -> Response:
        reference = _reference()
        log.error("web %s %s failed (reference %s)", request.method, request.url.path, reference, exc_info=exc)
        return page(request, "error.html", 500, title="Something went wrong", reference=reference, session=None)

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", listing, methods=["GET"]),
        Route("/m/{qid}", message, methods=["GET"]),
        Route("/m/{qid}/{verb}", act, methods=["POST"]),
        Route("/r/{token}", recipient_page, methods=["GET"]),
        Route("/r/{token}/release", recipient_release, methods=["POST"]),
        Route("/r/{token}/sender", recipient_sender, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: http_error,
        Exception: server_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)
    return SecurityHeaders(app, settings.web.secure_cookies)


def _cookie(response: Response, name: str, value: str, secure: bool, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="strict")


def _valid_id(quarantine_id: str) -> bool:
    try:
        check_id(quarantine_id)
    except MailwardError:
        return False
    return True
