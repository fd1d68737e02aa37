"""Sizes the user types (`--shard-size 64MB`, `--max-upload 100MB`, `cluster.memory_per_worker`)
have one parser and one meaning per unit, pydantic's ByteSize: KB, MB, GB are powers of 10
(1 MB = 10^6 bytes) and KiB, MiB, GiB powers of 2 (1 MiB = 2^20 bytes); a plain number is bytes.
"""

from __future__ import annotations

from pydantic import ByteSize, TypeAdapter, ValidationError

from launcher.errors import UserError

_BYTE_SIZE = TypeAdapter(ByteSize)


def parse_size(text: str, option: str, minimum: int = 1, maximum: int | None = None) -> int:
    """'64MB' -> 64_000_000, '1GiB' -> 1_073_741_824, '4096' -> 4096.

    Raises:
        UserError: naming `option`: not a size, or outside [minimum, maximum].
    """
    try:
        value = int(_BYTE_SIZE.validate_python(text.strip()))
    except ValidationError:
        raise UserError(
            f"{option}: cannot read {text!r} as a size (e.g. 64MB, 1GiB, 500000)"
        ) from None
    if value < minimum:
        raise UserError(f"{option}: must be at least {format_size(minimum)} (got {text!r})")
    if maximum is not None and value > maximum:
        raise UserError(f"{option}: must be at most {format_size(maximum)} (got {text!r})")
    return value


def format_size(size: float) -> str:
    """Bytes in the unit a reader expects: `1.5 MB`, `400 MiB` for exact powers of two."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor:g} {unit}"
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size:g} B"
