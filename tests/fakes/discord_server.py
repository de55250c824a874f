"""A fake Discord REST API + gateway on 127.0.0.1 for driving the real discord.py.

One aiohttp app serves `/api/v10/...` (the REST routes discord.py uses), `/gateway` (a websocket
speaking the gateway protocol: HELLO, heartbeats, IDENTIFY → READY + GUILD_CREATE, then whatever
events the test dispatches) and `/cdn/...` (attachment bytes). It records every REST call, uploads
included, and does what Discord does that a client cannot fake for itself: it refuses the
message-content intent with close 4014 when told to, empties the content and attachments of guild
messages that do not mention the bot when that intent is missing, and rejects uploads over the limit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.local_server import LocalServer

TOKEN = "FAKE.DISCORD.TOKEN"
BOT_ID = 900000000000000001
APP_ID = 900000000000000002
GUILD_ID = 910000000000000001
CHANNEL_ID = 920000000000000001  # a channel where the bot answers only when mentioned
OPEN_CHANNEL_ID = 920000000000000002  # a channel listed in DISCORD_CHANNEL_IDS
MESSAGE_CONTENT = 1 << 15
MiB = 1024 * 1024


@dataclass
class Call:
    method: str
    path: str
    payload: dict[str, Any]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # part name → (filename, bytes)
    channel_id: int | None = None  # where the message lands (interactions: the interaction's channel)


class FakeDiscord(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.files: dict[str, bytes] = {}
        self.identify: list[dict] = []  # every IDENTIFY payload seen
        self.refuse_message_content = False  # close 4014 when the intent is asked for
        self.upload_limit = 10 * MiB  # Discord's default attachment limit
        self._granted_content = False
        self._interactions: dict[str, dict] = {}  # token → the interaction (for its channel)
        self._ids = itertools.count(930000000000000001)
        self._seq = itertools.count(1)
        self._cond = threading.Condition()
        self._ws: web.WebSocketResponse | None = None

    # ------------------------------------------------------------------ lifecycle
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/cdn/{name}", self._cdn)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)

    def reset(self) -> None:
        with self._cond:
            self.calls.clear()
            self.identify.clear()
        self.refuse_message_content = False
        self.upload_limit = 10 * MiB

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ------------------------------------------------------------------ test side
    def add_file(self, name: str, data: bytes) -> str:
        """Serve `data` as an attachment; returns its URL."""
        key = f"{next(self._ids)}-{name}"
        self.files[key] = data
        return f"http://127.0.0.1:{self.port}/cdn/{key}"

    def dispatch(self, event: str, data: dict) -> None:
        """Send a gateway event (op 0) to the connected bot."""
        if event == "MESSAGE_CREATE":
            data = self._as_discord_delivers(data)
        if event == "INTERACTION_CREATE":
            self._interactions[data["token"]] = data
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._send_event(event, data), self._loop).result(10)

    def wait_for(self, predicate, count: int = 1, timeout: float = 120) -> list[Call]:
        """Block until `count` recorded calls satisfy `predicate`; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.calls if predicate(c)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(c.method, c.path) for c in self.calls]
                    raise TimeoutError(f"expected {count} matching calls; calls so far: {seen}")
                self._cond.wait(left)

    def messages(self, channel_id: int) -> list[Call]:
        """Messages the bot posted to a channel: plain sends, interaction responses and follow-ups."""
        return [c for c in self.calls if c.channel_id == channel_id and c.payload.get("_message")]

    def wait_messages(self, channel_id: int, count: int = 1, timeout: float = 120) -> list[Call]:
        self.wait_for(lambda c: c.channel_id == channel_id and c.payload.get("_message"), count, timeout)
        return self.messages(channel_id)

    def wait_texts(self, channel_id: int, *expected: str, timeout: float = 120) -> list[str]:
        """Block until every expected text (a prefix is enough) was posted to the channel."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                texts = self.texts(channel_id)
                missing = [e for e in expected if not any(t.startswith(e) for t in texts)]
                if not missing:
                    return texts
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"never sent to {channel_id}: {missing}; sent: {texts}")
                self._cond.wait(left)

    def texts(self, channel_id: int) -> list[str]:
        return [c.payload.get("content") or "" for c in self.messages(channel_id)]

    def find(self, method: str, path_part: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and path_part in c.path]

    # ------------------------------------------------------------------ gateway
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame["op"] == 1:
                await ws.send_str(json.dumps({"op": 11, "d": None}))
            elif frame["op"] == 2:
                with self._cond:
                    self.identify.append(frame["d"])
                    self._cond.notify_all()
                if frame["d"].get("token") != TOKEN:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                content = bool(int(frame["d"]["intents"]) & MESSAGE_CONTENT)
                if content and self.refuse_message_content:
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                self._granted_content = content
                self._ws = ws
                await self._ready(ws)
        if self._ws is ws:
            self._ws = None
        return ws

    async def _ready(self, ws: web.WebSocketResponse) -> None:
        ready = {
            "v": 10,
            "user": bot_user(),
            "session_id": "fake-session",
            "resume_gateway_url": self.gateway_url,
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "application": {"id": str(APP_ID), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self._send_event("READY", ready, ws)
        await self._send_event("GUILD_CREATE", _guild(), ws)

    async def _send_event(self, event: str, data: dict, ws: web.WebSocketResponse | None = None) -> None:
        ws = ws or self._ws
        for _ in range(200):  # the bot may still be connecting
            if ws is not None:
                break
            await asyncio.sleep(0.05)
            ws = self._ws
        assert ws is not None, "no bot connected to the fake gateway"
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": next(self._seq), "d": data}))

    def _as_discord_delivers(self, data: dict) -> dict:
        """Without the message-content intent, guild messages that don't mention the bot arrive empty."""
        mentioned = any(int(u["id"]) == BOT_ID for u in data.get("mentions", []))
        if data.get("guild_id") and not mentioned and not self._granted_content:
            data = {**data, "content": "", "attachments": [], "embeds": [], "components": []}
        return data

    # ------------------------------------------------------------------ REST
    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        return web.Response(status=404) if data is None else web.Response(body=data)

    async def _rest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {TOKEN}" and not request.path.startswith(
            ("/api/v10/interactions/", "/api/v10/webhooks/")
        ):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        path = "/" + request.match_info["path"]
        payload, files = await _read_body(request)
        call = Call(request.method, path, payload, files)
        parts = path.strip("/").split("/")
        response = await self._route(call, parts, request)
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()
        return response

    async def _route(self, call: Call, parts: list[str], request: web.Request) -> web.Response:
        method = call.method
        if parts == ["users", "@me"]:
            return _json(bot_user())
        if parts == ["oauth2", "applications", "@me"]:
            return _json(_application())
        if parts[:1] == ["applications"] and parts[-1] == "commands" and method == "PUT":
            return _json(
                [
                    {"id": str(next(self._ids)), "application_id": str(APP_ID), "version": "1", **cmd}
                    for cmd in call.payload.get("_list", [])
                ]
            )
        if parts[:1] == ["channels"] and parts[2:] == ["typing"]:
            call.channel_id = int(parts[1])
            return web.Response(status=204)
        if parts[:1] == ["channels"] and parts[2:] == ["messages"] and method == "POST":
            call.channel_id = int(parts[1])
            return self._created(call)
        if parts[:1] == ["interactions"] and parts[-1] == "callback":
            return self._interaction_callback(call, parts[2])
        if parts[:1] == ["webhooks"]:
            token = parts[2]
            interaction = self._interactions.get(token, {})
            call.channel_id = int(interaction.get("channel_id", 0)) or None
            return self._created(call)
        return _json({"message": f"fake: no route {method} /{'/'.join(parts)}", "code": 0}, 404)

    def _created(self, call: Call) -> web.Response:
        """A posted or edited message: check the upload limit, answer with the message object."""
        too_big = [name for name, data in call.files.values() if len(data) > self.upload_limit]
        if too_big:
            call.payload["_rejected"] = too_big
            return _json({"message": "Request entity too large", "code": 40005}, 413)
        call.payload["_message"] = True
        return _json(self._message_object(call))

    def _interaction_callback(self, call: Call, token: str) -> web.Response:
        interaction = self._interactions.get(token, {})
        call.channel_id = int(interaction.get("channel_id", 0)) or None
        kind = int(call.payload.get("type", 0))
        data = call.payload.get("data") or {}
        body: dict[str, Any] = {
            "interaction": {
                "id": interaction.get("id", "0"),
                "type": interaction.get("type", 2),
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & 64),
            },
            "resource": {"type": kind},
        }
        if kind in (4, 7):  # a message, or an update of the message a button sits on
            call.payload.update(data)
            call.payload["type"] = kind
            too_big = [n for n, d in call.files.values() if len(d) > self.upload_limit]
            if too_big:
                return _json({"message": "Request entity too large", "code": 40005}, 413)
            call.payload["_message"] = True
            message = self._message_object(call)
            body["interaction"]["response_message_id"] = message["id"]
            body["resource"]["message"] = message
        return _json(body)

    def _message_object(self, call: Call) -> dict:
        attachments = [
            {
                "id": str(next(self._ids)),
                "filename": filename,
                "size": len(data),
                "url": self.add_file(filename, data),
                "proxy_url": "",
            }
            for filename, data in call.files.values()
        ]
        return message(
            bot_user(),
            call.channel_id or 0,
            call.payload.get("content") or "",
            attachments=attachments,
            components=call.payload.get("components") or [],
        )


async def _read_body(request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """discord.py sends JSON, or multipart with `payload_json` and `files[N]` parts."""
    files: dict[str, tuple[str, bytes]] = {}
    payload: Any = {}
    if request.content_type == "multipart/form-data":
        form = await request.post()  # reads the whole body, so the connection stays usable after a 413
        for name, value in form.items():
            if isinstance(value, web.FileField) and name != "payload_json":
                files[name] = (value.filename, value.file.read())
            elif name == "payload_json":
                payload = json.loads(value.file.read() if isinstance(value, web.FileField) else value)
    elif request.can_read_body:
        raw = await request.read()
        payload = json.loads(raw) if raw else {}
    if isinstance(payload, list):
        payload = {"_list": payload}
    return payload, files


def _json(body: Any, status: int = 200) -> web.Response:
    # discord.py decodes only when the Content-Type is exactly application/json (no charset)
    response = web.Response(status=status, body=json.dumps(body).encode())
    response.headers["Content-Type"] = "application/json"
    return response


# ---------------------------------------------------------------------- payload builders
def bot_user() -> dict:
    return {"id": str(BOT_ID), "username": "TalkTwin", "discriminator": "0", "avatar": None, "bot": True}


def user(uid: int, name: str = "ann") -> dict:
    return {"id": str(uid), "username": name, "discriminator": "0", "avatar": None, "global_name": name}


def _application() -> dict:
    return {
        "id": str(APP_ID),
        "name": "TalkTwin",
        "description": "",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": user(1, "owner"),
        "verify_key": "0" * 64,
        "flags": 0,
    }


def _guild() -> dict:
    everyone = {
        "id": str(GUILD_ID),
        "name": "@everyone",
        "permissions": str((1 << 41) - 1),
        "position": 0,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
    }
    channels = [
        {"id": str(cid), "type": 0, "name": name, "position": i, "guild_id": str(GUILD_ID)}
        for i, (cid, name) in enumerate(((CHANNEL_ID, "general"), (OPEN_CHANNEL_ID, "twin")))
    ]
    for ch in channels:
        ch["permission_overwrites"] = []
    return {
        "id": str(GUILD_ID),
        "name": "Twins",
        "icon": None,
        "owner_id": "1",
        "unavailable": False,
        "roles": [everyone],
        "channels": channels,
        "members": [{"user": bot_user(), "roles": [], "joined_at": "2024-01-01T00:00:00+00:00", "flags": 0}],
        "member_count": 3,
        "emojis": [],
        "stickers": [],
        "features": [],
        "premium_tier": 0,
        "voice_states": [],
        "presences": [],
        "threads": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "large": False,
        "mfa_level": 0,
        "verification_level": 0,
        "explicit_content_filter": 0,
        "default_message_notifications": 0,
        "system_channel_flags": 0,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
    }


_snowflakes = itertools.count(940000000000000001)


def snowflake() -> int:
    return next(_snowflakes)


def message(
    author: dict,
    channel_id: int,
    content: str = "",
    *,
    guild: bool = False,
    mentions: list[dict] | None = None,
    attachments: list[dict] | None = None,
    flags: int = 0,
    components: list | None = None,
) -> dict:
    """A message object as the gateway and REST API carry it."""
    data: dict[str, Any] = {
        "id": str(snowflake()),
        "type": 0,
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": "2024-01-01T00:00:00+00:00",
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": mentions or [],
        "mention_roles": [],
        "attachments": attachments or [],
        "embeds": [],
        "pinned": False,
        "flags": flags,
        "components": components or [],
    }
    if guild:
        data["guild_id"] = str(GUILD_ID)
        data["member"] = {
            "roles": [],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
        }
    return data


def attachment(url: str, filename: str, size: int, content_type: str, **extra: Any) -> dict:
    return {
        "id": str(snowflake()),
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
        **extra,
    }


def slash(
    sender: dict,
    name: str,
    options: list[dict] | None = None,
    *,
    channel_id: int,
    guild: bool = False,
    locale: str = "en-US",
    resolved: dict | None = None,
) -> dict:
    """An INTERACTION_CREATE payload for a slash command."""
    data: dict[str, Any] = {"id": str(snowflake()), "name": name, "type": 1, "options": options or []}
    if resolved:
        data["resolved"] = resolved
    return _interaction(sender, 2, data, channel_id=channel_id, guild=guild, locale=locale)


def button(
    sender: dict, custom_id: str, *, channel_id: int, guild: bool = False, locale: str = "en-US"
) -> dict:
    """An INTERACTION_CREATE payload for a button press on a message the bot sent."""
    data = {"custom_id": custom_id, "component_type": 2}
    payload = _interaction(sender, 3, data, channel_id=channel_id, guild=guild, locale=locale)
    payload["message"] = message(bot_user(), channel_id, "?", guild=guild)
    return payload


def _interaction(sender: dict, kind: int, data: dict, *, channel_id: int, guild: bool, locale: str) -> dict:
    payload: dict[str, Any] = {
        "id": str(snowflake()),
        "application_id": str(APP_ID),
        "type": kind,
        "data": data,
        "channel_id": str(channel_id),
        "channel": {"id": str(channel_id), "type": 0 if guild else 1},
        "token": f"itoken-{snowflake()}",
        "version": 1,
        "locale": locale,
        "app_permissions": str((1 << 41) - 1),
        "attachment_size_limit": 10 * MiB,
        "entitlements": [],
        "authorizing_integration_owners": {"0": str(GUILD_ID)} if guild else {"1": sender["id"]},
        "context": 0 if guild else 1,
    }
    if guild:
        payload["guild_id"] = str(GUILD_ID)
        payload["guild_locale"] = "en-US"
        payload["member"] = {
            "user": sender,
            "roles": [],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "permissions": "0",
            "flags": 0,
        }
    else:
        payload["user"] = sender
        payload["channel"]["recipients"] = [sender]
    return payload
