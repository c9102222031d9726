"""The one epoch-milliseconds to ISO 8601 UTC formatter of the project (DESIGN §3).

Every ``created_at``, ``received_at``, ``starts_at`` and ``ends_at`` goes through
``iso_utc_ms``. It is total over Python ints: ``datetime`` stops at year 9999, but the
decoder accepts any ``ts`` up to 2**53 - 1 (year ~285,000) and outputs carry ``ts + W``, so a
formatter built on ``datetime`` crashed the worker on a schema-valid input. Years outside
0000-9999 use ISO 8601's expanded form: a sign and at least six digits.
"""

from __future__ import annotations

_MS_PER_DAY = 86_400_000
# Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
_EPOCH_SHIFT_DAYS = 719_468
_DAYS_PER_ERA = 146_097


def iso_utc_ms(ts_ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds; never raises for an int.

    The text up to the minute is remembered for the last minute formatted: the replay and
    worker clocks move with every event, and most calls then fall in the same minute.

    >>> iso_utc_ms(1_767_225_900_000)
    '2026-01-01T00:05:00.000Z'
    >>> iso_utc_ms(0), iso_utc_ms(-1)
    ('1970-01-01T00:00:00.000Z', '1969-12-31T23:59:59.999Z')
    >>> iso_utc_ms(253_402_300_800_000)
    '+010000-01-01T00:00:00.000Z'
    """
    global _last_minute
    minute, ms_of_minute = divmod(ts_ms, 60_000)
    if minute == _last_minute[0]:
        sec, ms = divmod(ms_of_minute, 1000)
        return f"{_last_minute[1]}{sec:02d}.{ms:03d}Z"
    days, ms_of_day = divmod(ts_ms, _MS_PER_DAY)
    # Civil date from a day count (H. Hinnant's days_from_civil inverse): plain integer
    # arithmetic, exact for every int, where datetime raises OverflowError past 9999.
    z = days + _EPOCH_SHIFT_DAYS
    era = z // _DAYS_PER_ERA
    doe = z - era * _DAYS_PER_ERA
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    secs, ms = divmod(ms_of_day, 1000)
    mins, sec = divmod(secs, 60)
    hour, minute_of_hour = divmod(mins, 60)
    year_text = f"{year:04d}" if 0 <= year <= 9999 else f"{year:+07d}"
    prefix = f"{year_text}-{month:02d}-{day:02d}T{hour:02d}:{minute_of_hour:02d}:"
    _last_minute = (minute, prefix)
    return f"{prefix}{sec:02d}.{ms:03d}Z"


_last_minute: tuple[int | None, str] = (None, "")
