"""Memory and profile keys. Platforms never share data: every key starts with the platform.

Keys are validated here so nothing a chat platform sends can smuggle separators or path parts
into them; still, anything on disk is named by `disk_name(key)` (a hash), never by the key itself.
"""

from __future__ import annotations

import hashlib
import re

PLATFORMS = frozenset({"telegram", "discord", "cli", "http", "test"})
_ID = re.compile(r"^-?[A-Za-z0-9_-]{1,64}$")


def _part(value: int | str, what: str) -> str:
    text = str(value).strip()
    if isinstance(value, bool) or not _ID.fullmatch(text):
        raise ValueError(f"bad {what}: {value!r}")
    return text


def _platform(platform: str) -> str:
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform: {platform!r}")
    return platform


def user_key(platform: str, user_id: int | str) -> str:
    """A person on a platform: "telegram:42". Their profile, avatar and documents hang off it."""
    return f"{_platform(platform)}:{_part(user_id, 'user id')}"


def conversation_key(
    platform: str,
    user_id: int | str,
    chat_id: int | str | None = None,
    *,
    group: bool = False,
    shared_group: bool = False,
) -> str:
    """One memory thread: "telegram:42" (private), "telegram:<chat>:<user>" (a member in a group) or
    "telegram:<chat>" (a group sharing one memory)."""
    user = user_key(platform, user_id)
    if not group:
        return user
    if chat_id is None:
        raise ValueError("a group conversation needs a chat id")
    chat = _part(chat_id, "chat id")
    return f"{platform}:{chat}" if shared_group else f"{platform}:{chat}:{user.split(':', 1)[1]}"


def check_user(user: str) -> str:
    """`user` if it is a well-formed user key (as the pipeline passes it), else ValueError."""
    platform, _, uid = user.partition(":")
    return user_key(platform, uid)


def check_conversation(conversation: str) -> str:
    parts = conversation.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"bad conversation key: {conversation!r}")
    _platform(parts[0])
    for p in parts[1:]:
        _part(p, "conversation part")
    return conversation


def platform_of(key: str) -> str:
    return key.split(":", 1)[0]


def is_shared_group(conversation: str, user: str) -> bool:
    """A two-part conversation key that is not the user's own private chat is a shared group."""
    return conversation.count(":") == 1 and conversation != user


def disk_name(key: str) -> str:
    """A file or folder name for a key: a hash, so keys never build paths."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
