"""WireGuard message layouts and protocol constants (whitepaper sections 5.4 and 6).

All integers on the wire are little-endian. Every message starts with a 4-byte type field: the
type in its first byte and three zero bytes.

=====================  ====  ========================================================
message                size  layout
=====================  ====  ========================================================
handshake initiation    148  type | sender u32 | ephemeral 32 | static 32+16 |
                             timestamp 12+16 | mac1 16 | mac2 16
handshake response       92  type | sender u32 | receiver u32 | ephemeral 32 |
                             empty 0+16 | mac1 16 | mac2 16
cookie reply             64  type | receiver u32 | nonce 24 | cookie 16+16
transport data         32+   type | receiver u32 | counter u64 | packet+16 (padded to 16)
=====================  ====  ========================================================
"""

from __future__ import annotations

__all__ = [
    "COOKIE_REFRESH_TIME",
    "HANDSHAKE_INITIATION_RATE",
    "KEEPALIVE_TIMEOUT",
    "MAX_STAGED_PACKETS",
    "MAX_TIMER_HANDSHAKES",
    "MESSAGE_COOKIE_REPLY",
    "MESSAGE_COOKIE_REPLY_SIZE",
    "MESSAGE_DATA",
    "MESSAGE_DATA_MIN_SIZE",
    "MESSAGE_INITIATION",
    "MESSAGE_INITIATION_SIZE",
    "MESSAGE_RESPONSE",
    "MESSAGE_RESPONSE_SIZE",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_TIMEOUT",
    "TRANSPORT_HEADER_SIZE",
    "TRANSPORT_OVERHEAD",
    "UNDER_LOAD_AFTER_TIME",
]

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_DATA = 4

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
MESSAGE_DATA_MIN_SIZE = TRANSPORT_HEADER_SIZE + 16
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_SIZE + 16
"""Bytes a transport message adds to an IP packet (before padding): header and tag."""

# Protocol timers and limits: whitepaper section 6.1, identical to wireguard-go's constants.
REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REJECT_AFTER_TIME = 180.0
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50
UNDER_LOAD_AFTER_TIME = 1.0
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
MAX_STAGED_PACKETS = 128
