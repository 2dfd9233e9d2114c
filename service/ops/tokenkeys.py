"""`hubspot-webhooks rotate-token-key`: seal every stored OAuth token with the first key.

Rotation: put a new key in front of TOKEN_ENCRYPTION_KEY (`NEW,OLD`) on every process, run this
command, then remove the old key. It also seals rows stored in plaintext before tokens were
encrypted. It works in one transaction, so it either re-seals every row or changes none (when
a row opens with none of the keys it names those portals and exits 1). `--generate` prints a
new key and nothing else, and needs no valid configuration (the one to fix may be the key).
"""

from __future__ import annotations

import argparse
import sys

from service.hubspot.oauth import TokenKeyError, reseal_tokens
from service.hubspot.sealing import TokenCipher, generate_key
from service.ops.commands import operator_database
from service.settings import Settings, SettingsError

NEEDS_KEY = (
    "TOKEN_ENCRYPTION_KEY is not set: set it to the new key first (make one with"
    " `hubspot-webhooks rotate-token-key --generate`)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's one option: `--generate` runs without Settings (cli's `unconfigured`)."""
    parser.add_argument(
        "--generate",
        dest="unconfigured",
        action="store_const",
        const=generate,
        help="print a new TOKEN_ENCRYPTION_KEY key (and nothing else)",
    )


def generate(args: argparse.Namespace) -> int:
    """`rotate-token-key --generate`: a new Fernet key on stdout, nothing else."""
    sys.stdout.write(generate_key() + "\n")
    return 0


def rotate(settings: Settings) -> int:
    """`rotate-token-key`: re-seal every row with the first key; 1 when some row cannot be."""
    if not settings.token_encryption_keys:
        raise SettingsError(NEEDS_KEY)
    cipher = TokenCipher(settings.token_encryption_keys)
    with operator_database(settings) as engine:
        try:
            before = reseal_tokens(engine, cipher)
        except TokenKeyError as exc:
            sys.stderr.write(
                f"hubspot-webhooks rotate-token-key: {exc}; add the key they were sealed with"
                " to TOKEN_ENCRYPTION_KEY (after the first) and run it again. Nothing changed.\n"
            )
            return 1
    total = len(before.first) + len(before.older) + len(before.plaintext)
    sys.stderr.write(
        f"sealed the OAuth tokens of {total} portal(s) with the first key: {len(before.older)}"
        f" were on an older key, {len(before.plaintext)} were not encrypted\n"
    )
    if len(settings.token_encryption_keys) > 1:
        sys.stderr.write("the other keys in TOKEN_ENCRYPTION_KEY can now be removed\n")
    return 0
