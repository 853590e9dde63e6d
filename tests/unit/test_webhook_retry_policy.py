"""lifecycle_webhook.retry_policy, by table: what each answer means, how long to wait,
and when retrying ends in a dead letter."""

from __future__ import annotations

import email.utils

import pytest

from lifecycle_webhook.retry_policy import (
    Answer, Attempts, Verdict, delay, judge, next_step, retry_after_seconds)

NOW = 1_800_000_000.0  # Unix time, for HTTP-dates
DAY = 86400.0


def answer(status, retry_after=None, detail=None):
    return Answer(status, retry_after, detail or f"{status} something")


@pytest.mark.parametrize("status, verdict", [
    (200, Verdict.ACCEPTED), (201, Verdict.ACCEPTED), (202, Verdict.ACCEPTED),
    (204, Verdict.ACCEPTED), (299, Verdict.ACCEPTED),
    (None, Verdict.RETRY), (408, Verdict.RETRY), (429, Verdict.RETRY),
    (500, Verdict.RETRY), (502, Verdict.RETRY), (503, Verdict.RETRY), (504, Verdict.RETRY),
    (599, Verdict.RETRY),
    (100, Verdict.REFUSED), (199, Verdict.REFUSED), (301, Verdict.REFUSED),
    (302, Verdict.REFUSED), (307, Verdict.REFUSED), (400, Verdict.REFUSED),
    (401, Verdict.REFUSED), (403, Verdict.REFUSED), (404, Verdict.REFUSED),
    (409, Verdict.REFUSED), (410, Verdict.REFUSED), (413, Verdict.REFUSED),
    (422, Verdict.REFUSED), (600, Verdict.REFUSED),
])
def test_judge(status, verdict):
    assert judge(answer(status)) is verdict


@pytest.mark.parametrize("value, seconds", [
    (None, None),
    ("120", 120.0),
    ("0", 0.0),
    (" 7 ", 7.0),
    ("-5", 0.0),
    (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
    (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),   # past: now
    ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
    (email.utils.formatdate(NOW + 30), 30.0),                # "-0000" zone
    ("", None),
    ("soon", None),
    ("1.5", None),
    ("Mon, 99 Dec 2026 06:00:00 GMT", None),
    ("12 apples", None),
])
def test_retry_after_seconds(value, seconds):
    assert retry_after_seconds(value, NOW) == seconds


@pytest.mark.parametrize("attempt, step", [(0, 1), (1, 2), (2, 4), (3, 8), (8, 256),
                                           (9, 300), (50, 300), (10**6, 300)])
def test_delay_doubles_from_one_second_up_to_the_cap_with_jitter(attempt, step):
    assert delay(attempt, None, 300, rand=lambda: 1.0) == step
    assert delay(attempt, None, 300, rand=lambda: 0.0) == step / 2
    assert step / 2 <= delay(attempt, None, 300) <= step


def test_retry_after_is_a_minimum_even_beyond_the_cap():
    assert delay(0, 30.0, 300, rand=lambda: 1.0) == 30.0
    assert delay(0, 3600.0, 300, rand=lambda: 1.0) == 3600.0
    # Shorter than the back-off: the back-off.
    assert delay(5, 2.0, 300, rand=lambda: 1.0) == 32.0
    assert delay(5, 0.0, 300, rand=lambda: 1.0) == 32.0


def test_accepted():
    attempts = Attempts()
    assert next_step(attempts, answer(200), 10.0, DAY, 300) == (Verdict.ACCEPTED, None, "")
    assert (attempts.count, attempts.first_attempt, attempts.last) == (1, 10.0, answer(200))


def test_refused_says_what_the_endpoint_answered():
    attempts = Attempts()
    attempts.sending(5.0)
    got = next_step(attempts, Answer(400, None, 'Bad Request: {"error": "no"}'), 6.0, DAY, 300)
    assert got == (Verdict.REFUSED, None, 'endpoint refused it: Bad Request: {"error": "no"}')


def test_retries_back_off_from_the_first_attempt_until_retry_for_then_refuse():
    attempts = Attempts()
    now = 100.0
    attempts.sending(now)
    ats = []
    while True:
        now += 0.5  # each attempt takes half a second to fail
        verdict, at, reason = next_step(attempts, Answer(503, None, "503 Service Unavailable: "
                                                         "down"), now, 60.0, 300,
                                        rand=lambda: 1.0)
        if verdict is not Verdict.RETRY:
            break
        assert reason == ""
        ats.append(at - now)
        assert at - attempts.first_attempt <= 60.0
        attempts.sending(at)
        now = at
    assert ats == [1, 2, 4, 8, 16]
    assert attempts.first_attempt == 100.0
    assert verdict is Verdict.REFUSED and at is None
    assert reason == ("retries expired after 6 attempts over 34s: last answer "
                      "503 Service Unavailable: down")


def test_no_response_is_retried_too():
    attempts = Attempts()
    attempts.sending(0.0)
    verdict, at, _ = next_step(attempts, Answer(None, None, "connection refused"), 0.01,
                               DAY, 300, rand=lambda: 0.0)
    assert verdict is Verdict.RETRY and at == pytest.approx(0.51)


def test_retry_after_is_honoured():
    attempts = Attempts()
    attempts.sending(0.0)
    verdict, at, _ = next_step(attempts, answer(429, "120"), 1.0, DAY, 300, rand=lambda: 1.0)
    assert (verdict, at) == (Verdict.RETRY, 121.0)
    date = email.utils.formatdate(NOW + 600, usegmt=True)
    verdict, at, _ = next_step(attempts, answer(503, date), 200.0, DAY, 300,
                               rand=lambda: 1.0, wall_now=NOW)
    assert (verdict, at) == (Verdict.RETRY, 800.0)


def test_a_retry_after_beyond_retry_for_ends_retrying_at_once():
    attempts = Attempts()
    attempts.sending(0.0)
    verdict, at, reason = next_step(attempts, answer(503, "7200", "503 Service Unavailable: "),
                                    1.0, 3600.0, 300)
    assert (verdict, at) == (Verdict.REFUSED, None)
    assert reason.startswith("retries expired after 1 attempts over 1s: last answer 503")


def test_without_sending_the_first_answer_starts_the_clock():
    attempts = Attempts()
    next_step(attempts, answer(500), 42.0, DAY, 300)
    assert attempts.first_attempt == 42.0
    attempts.sending(50.0)
    assert attempts.first_attempt == 42.0
